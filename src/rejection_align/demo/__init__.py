"""The demo: tiny models built from configs, the shipped demo assets, and the end-to-end run."""
