"""WeCom's protocol: crypto, callback envelopes, XML messages and passive replies, the API client, the sandbox and the simulator."""
