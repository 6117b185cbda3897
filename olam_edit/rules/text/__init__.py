"""The text rule: "render SOURCE as DESTINATION" as a closed-form edit of the layers that read text
embeddings (cross-attention ``to_k`` / ``to_v``), TIME / UCE style. :mod:`.solve` holds the
framework-agnostic math on key / value tensors (prior, solve, factored deltas, report); the diffusers
adapter (:mod:`olam_edit.adapters.diffusers.text`) finds the layers and encodes the prompts."""
