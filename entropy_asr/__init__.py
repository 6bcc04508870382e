"""entropy-asr: LLM-based ASR with phoneme-CTC encoders and entropy-allocation monitoring."""


def __getattr__(name: str):
    # `entropy_asr.Recognizer` without importing torch and transformers on `import entropy_asr`
    if name == "Recognizer":
        from entropy_asr.inference.recognizer import Recognizer

        return Recognizer
    raise AttributeError(f"module 'entropy_asr' has no attribute {name!r}")
