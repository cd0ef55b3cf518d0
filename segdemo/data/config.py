"""The data section of a run's configuration (DataConfig): what the data layer reads, so it lives here;
segdemo.core.config composes it with the model and training sections into the RunConfig every checkpoint
stores."""

from __future__ import annotations

from dataclasses import dataclass

from segdemo.errors import ConfigError

RESIZE_MODES = ("short", "long", "square")
PET_MODES = ("trimap", "binary")


@dataclass
class DataConfig:
    source: str = "builtin"  # "builtin", "oxford-pet", a folder dataset or a .zip of one
    image_size: int = 64  # the scale: the model sees images resized so that their `resize` side is this many
    # px, aspect ratio kept; predictions come back at each image's own size. The built-in data is drawn
    # square at 128, so it trains at 64x64. 64 keeps a CPU run near a minute.
    resize: str = "short"  # which side image_size sets: "short", "long", or "square" (squash to image_size
    # x image_size: how checkpoints from before aspect-kept geometry were trained; they load as "square")
    crop_size: int | None = None  # square training crop, padded with the ignore index where the scaled image
    # is smaller; None: image_size. Evaluation and prediction always see the whole scaled image.
    scale_range: tuple[float, float] = (0.85, 1.15)  # random scale jitter for training (augment on, half the images)
    window: int | None = None  # sliding-window side (model px) for evaluation and prediction of images whose
    # scaled size exceeds it; None: the whole image in one pass
    augment: bool = True  # flips, small scale/rotate, brightness/contrast on the train split only
    val_fraction: float = 0.2  # used only when the source has no val/ split of its own
    seed: int = 0  # fixes the built-in data and any seeded split
    classes_file: str | None = None  # JSON with names/colors/ignore_index for a folder dataset
    pet_mode: str = "trimap"  # Oxford-IIIT Pet: "trimap" (pet, background, border) or "binary" (border ignored)
    download: bool = False  # Oxford-IIIT Pet: fetch it if the root is empty (needs internet)
    builtin_train: int = 768  # number of built-in training images
    builtin_val: int = 128
    train_images: int | None = None  # cap for quick runs on big folders
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet statistics, which pretrained
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # encoders expect and small nets don't mind

    @property
    def crop(self) -> int:
        """The side of the square training crop."""
        return self.crop_size or self.image_size

    def validate(self) -> None:
        """Raise ConfigError with a sentence that says what to change."""
        if not 32 <= self.image_size <= 1024:
            raise ConfigError(f"image size must be between 32 and 1024, got {self.image_size}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.crop_size is not None and not 32 <= self.crop_size <= 1024:
            raise ConfigError(f"crop size must be between 32 and 1024, got {self.crop_size}")
        lo, hi = self.scale_range
        if not 0.25 <= lo <= hi <= 4:
            raise ConfigError(f"scale range must satisfy 0.25 <= low <= high <= 4, got {lo}..{hi}")
        if self.window is not None and not 32 <= self.window <= 4096:
            raise ConfigError(f"sliding window must be between 32 and 4096 px, got {self.window}")
        if self.pet_mode not in PET_MODES:
            raise ConfigError(f"pet mode must be {' or '.join(PET_MODES)}, got {self.pet_mode!r}")
