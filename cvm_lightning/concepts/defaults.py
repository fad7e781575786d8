"""The default text model and prompt templates (plain values, importable without torch)."""

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of a {}.",
)
