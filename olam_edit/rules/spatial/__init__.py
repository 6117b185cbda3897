"""The paper's spatial rule: context / copy / paste selections on generated samples, the rule tensors
they give, and the Rewriter that solves them in closed form."""
