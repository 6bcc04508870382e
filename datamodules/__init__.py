from datamodules.speech import SpeechDataModule
from datamodules.text import TextDataModule

__all__ = ["SpeechDataModule", "TextDataModule"]
