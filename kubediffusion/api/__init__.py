"""The OpenAI Images contract shared by the router and the inference server, and the HTTP edges both
keep the same way: the error envelope, the request body guard, the request header deadline."""
