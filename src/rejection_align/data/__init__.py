"""The data pipeline: LLaVA-format records in, LLaMA-Factory sharegpt datasets out (mix, convert, register, stats)."""
