"""Using a trained model: transcription, timestamps, long-form segmentation, streaming."""
