"""Lightning data: a class-incremental stream as one ``LightningDataModule``."""

from cvm_lightning.data.datamodule import ClassIncrementalDataModule, StreamBatchSampler, experience_loader

__all__ = ["ClassIncrementalDataModule", "StreamBatchSampler", "experience_loader"]
