"""Independent implementations that tests check the project against and
benchmarks time as baselines (benchmarks put ``tests/`` on their path)."""

import torch


def post_snnl_loop(batch_x, batch_y, temp):
    """The per-sample loop of the "Implementing Loss Functions" post, slips mended.

    The post never defined ``idx`` and overwrote ``loss`` on each iteration instead of
    adding to it; both are fixed here. Its ``assert float(prob.data) <= 1`` is left
    out: rounding gives 1 + 2e-16 where every close neighbour shares the label.
    """
    n = batch_x.shape[0]
    idx = torch.arange(n)  # mended: the post used idx without defining it
    loss = 0.0
    for i in range(n):
        label = batch_y[i]
        batch_same = batch_x[(batch_y == label) & (idx != i)]
        batch_rest = batch_x[idx != i]
        dists_1 = ((batch_x[i] - batch_same) ** 2).sum(dim=1)
        dists_2 = ((batch_x[i] - batch_rest) ** 2).sum(dim=1)
        prob = torch.exp(-dists_1 / temp).sum() / torch.exp(-dists_2 / temp).sum()
        loss = loss - torch.log(prob)  # mended: the post wrote `loss = -log(prob)`
    loss /= batch_x.shape[0]
    return loss
