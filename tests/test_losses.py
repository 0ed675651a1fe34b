import math

import torch

from forgetless.losses import IGNORE, ce_sum, count_targets


def test_ce_sum_matches_hand_computation():
    """Vocabulary of 2, one row of 3 positions; position t predicts token t+1.

    logits[0] = [0, 0]        -> p(token 1) = 1/2           -> -log = log 2
    logits[1] = [log 3, 0]    -> p(token 0) = 3/4           -> -log = log(4/3)
    labels = [x, 1, 0]: both targets count -> sum = log 2 + log(4/3) = log(8/3)
    """
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE, 1, 0]])
    assert torch.isclose(ce_sum(logits, labels), torch.tensor(math.log(8 / 3)))
    assert count_targets(labels) == 2


def test_ce_sum_skips_ignored_targets():
    """Masking the second target leaves only log 2."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE, 1, IGNORE]])
    assert torch.isclose(ce_sum(logits, labels), torch.tensor(math.log(2)))
    assert count_targets(labels) == 1
