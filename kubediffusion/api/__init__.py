"""The OpenAI Images contract shared by the router and the inference server."""
