"""segdemo: train a U-Net live and see, pixel by pixel, what it learned."""

__version__ = "0.1.0"
