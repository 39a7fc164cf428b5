"""Numbers and names that the data layer, the losses/metrics, the model and solution.py agree on."""

#: The default ``--bands`` preset: the Landsat 7 bands of the HKH slices that match GlacierHack's
#: B2, B3, B4, B6, B10 (Landsat 8/9 numbering). Names and presets live in ``data/bands.py``.
DEFAULT_BAND_PRESET = "competition"
#: The channels of that preset in a 15-channel HKH slice: B1, B2, B3, B5, B6_VCID1.
DEFAULT_BANDS = (0, 1, 2, 4, 5)

#: Label value of pixels that count for nothing (outside the HKH region, no-data). Losses and
#: metrics give them a weight of 0; it is never a class index.
IGNORE_INDEX = 255

#: The network's output stride: input height and width must be multiples of this.
OUTPUT_STRIDE = 16

#: DeepLabV3+'s dilation rates of the ASPP's three 3x3 branches (``--aspp-rates``; solution.py keeps
#: its own copy, as it imports nothing from the package, and reads the rates from model.pth).
ASPP_RATES = (6, 12, 18)

#: The ResNet encoders (torchvision's BasicBlock ResNets) and their BasicBlocks per stage (layer1..layer4);
#: solution.py keeps its own copy, as it imports nothing from the package, and reads the name from model.pth.
ENCODERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
#: The encoder of a model whose configuration names none (everything saved before ``--encoder``).
DEFAULT_ENCODER = "resnet34"

#: Probability of the free rotation and zoom of a training crop that ``--affine auto`` gives a small
#: dataset (``keras_glacier.data.sampling.auto_affine``; measured on everest-west, benchmarks/RESULTS.md).
AFFINE_PROBABILITY = 0.7

#: The tasks: phase 1 (glacier or not) and phase 2 (several classes).
TASKS = ("binary", "multiclass")

#: GlacierHack phase-2 mask values, by class name ("clean_ice" is the HKH name of "glacier").
PHASE2_VALUES = {"background": 0, "glacier": 85, "clean_ice": 85, "debris": 170, "lake": 255}

#: Classes of the binary task: labels 0/1, written masks 0/255.
BINARY_CLASSES = ("background", "glacier")
BINARY_VALUES = (0, 255)
#: Classes of a multi-class HKH dataset (the masks have clean-ice and debris channels, no lakes).
HKH_CLASSES = ("background", "clean_ice", "debris")
#: Classes of a multi-class band-folder dataset (phase-2 labels 0/85/170/255).
BAND_FOLDER_CLASSES = ("background", "glacier", "debris", "lake")


def class_values(class_names) -> tuple[int, ...]:
    """The value written for each class: 0/255 for the binary classes, else the phase-2 values."""
    names = tuple(class_names)
    if names == BINARY_CLASSES:
        return BINARY_VALUES
    return tuple(PHASE2_VALUES[name] for name in names)
