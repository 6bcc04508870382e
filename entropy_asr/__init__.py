"""entropy-asr: LLM-based ASR with phoneme-CTC encoders and entropy-allocation monitoring."""
