"""The web chat page served by ``python -m poppins serve`` at ``/`` (one static file)."""
