"""Ways to propose draft trees, named by :mod:`actors.drafters.spec` and built by
:func:`actors.drafters.factory.build_drafter`: ``ngram``, ``model:PATH`` (``model:distilled``: the
one bundled for the embedded default verifier), ``heads:PATH`` (Medusa-style heads on the
verifier's hidden states; ``heads:distilled``: the ones bundled for it), ``ngram+heads:PATH``
(both sources in one tree), ``early-exit[:LAYERS]`` or ``none``."""
