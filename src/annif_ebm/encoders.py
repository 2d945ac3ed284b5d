"""The encode step every encoder shares (the :class:`~.embedding.Encoder`
protocol is in embedding.py): equal texts are embedded once, and the vectors
that come back must be finite; they are float32."""

from __future__ import annotations

import numpy as np

from annif.exception import OperationFailedException

PROBE_TEXT = "dimension probe"


class EncoderBase:
    """``encode_queries``/``encode_documents`` on top of a subclass's
    ``_embed(texts, role)``, which gets distinct texts and ``role`` "query"
    (chunks) or "document" (labels) and returns their L2-normalised vectors.
    Subclasses set ``source`` and ``search_device``, then ``dimension =
    self._probe_dimension()``; they are built from the embedding settings
    (and the API settings) only, which are their cache key (see
    embedding.encoder_key)."""

    source: str
    dimension: int
    search_device: str

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Embed text chunks."""
        return self._encode(texts, "query")

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Embed vocabulary labels."""
        return self._encode(texts, "document")

    def _embed(self, texts: list[str], role: str) -> np.ndarray:
        raise NotImplementedError

    def _probe_dimension(self) -> int:
        """The dimension of the vectors, from embedding one text."""
        return self._encode([PROBE_TEXT], "query").shape[1]

    def _encode(self, texts: list[str], role: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, getattr(self, "dimension", 0)), dtype=np.float32)
        unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        vectors = np.asarray(self._embed(list(unique), role), dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise OperationFailedException(f"{self.source} produced NaN or infinite values")
        return vectors[inverse.reshape(-1)]
