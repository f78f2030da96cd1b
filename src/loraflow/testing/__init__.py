"""Stand-ins and emulators for testing loraflow without GPUs or network: they write exactly what the real
programs write (console output, file names, safetensors headers) so the real loraflow code runs against them."""
