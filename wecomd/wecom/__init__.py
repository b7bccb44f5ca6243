"""WeCom's protocol: crypto, XML messages and passive replies, the API client, the sandbox and the simulator."""
