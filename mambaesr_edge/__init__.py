"""mambaesr-edge: a Mamba super-resolution model from training to the Jetson camera."""

__version__ = "0.1.0"
