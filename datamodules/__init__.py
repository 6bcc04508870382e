from datamodules.speech import SpeechDataModule

__all__ = ["SpeechDataModule"]
