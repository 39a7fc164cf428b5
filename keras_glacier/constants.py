"""Numbers that the data layer, the losses/metrics and the model must agree on."""

#: Channels of an HKH ``slice_<i>_image_<j>.npy`` (15 bands) kept by default: B2, B3, B4, B6, B10.
DEFAULT_BANDS = (1, 2, 3, 5, 9)

#: Label value of pixels that count neither as glacier nor as background (outside the HKH
#: region mask, or no-data). Losses and metrics give them a weight of 0.
IGNORE_INDEX = 255

#: The network's output stride: input height and width must be multiples of this.
OUTPUT_STRIDE = 16

#: Value written in phase-2 masks per class name (binary masks write 0/255; see CONTRACT/README).
PHASE2_VALUES = {"background": 0, "glacier": 85, "clean_ice": 85, "debris": 170, "lake": 255}
