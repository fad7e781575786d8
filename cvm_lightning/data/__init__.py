"""Lightning data: a class-incremental stream as one ``LightningDataModule``."""

from cvm_lightning.data.datamodule import ClassIncrementalDataModule, experience_loader

__all__ = ["ClassIncrementalDataModule", "experience_loader"]
