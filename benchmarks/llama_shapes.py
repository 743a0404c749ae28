"""The Llama shapes the GPU benchmarks build with random weights, and the H200's dense bf16 peak for MFU.

Shared by `speed.py` (peft directly) and `cli_benchmark.py` (through LLaMA-Factory).
"""

H200_BF16_FLOPS = 989e12
LLAMA_SHAPES = {
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}
