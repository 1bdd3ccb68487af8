"""HTTP routes of the inference server, one ``APIRouter`` per group; ``create_app`` includes them all."""
