"""The OpenAI Images contract shared by the router and the inference server, and the HTTP edges both
keep the same way: the error envelope, the request body guard, the request header deadline.

Modules:
    schema.py      generations (JSON): ImageGenerationRequest, resolve_params -> GenerationParams, ImagesResponse
    edits.py       edits and variations (multipart): parse_edit_request / parse_variation_request -> EditRequest,
                   resolve_edit_params -> EditParams
    multipart.py   the bounded multipart/form-data parser and encoder (FormPart, MultipartLimits)
    imageinput.py  uploaded images checked from their bytes, never decoded here (ImageInfo, per-model ceilings)
    events.py      Server-Sent Events of streamed requests (OpenAI's event shapes, the wire format, a decoder)
    limits.py      per-model defaults and limits (GenerationDefaults, GenerationLimits, StylePreset)
    errors.py      the error tree and the OpenAI envelope
    bodylimit.py, headertimeout.py, disconnect.py   the HTTP edges
"""
