"""The files `forgetless export` writes, one module per format or part of one: the merged GGUF (gguf_model), its
architecture and vocabulary halves (gguf_arch, gguf_vocab), the GGUF LoRA (gguf_lora), the Ollama Modelfile
(ollama). deploy/export.py picks the writer and records what was written."""
