import sys

from keras_glacier.evaluate.cli import main

sys.exit(main())
