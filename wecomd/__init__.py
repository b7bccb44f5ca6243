"""wecomd: a self-hosted daemon for WeCom self-built app callbacks."""
__version__ = "0.1.0"
