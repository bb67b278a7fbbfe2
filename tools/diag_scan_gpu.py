import sys

import torch

sys.path.insert(0, 'tests')
from test_scan import make_inputs, rel_error

from mambaesr_edge.scan import selective_scan

for L in (17, 1000, 4097):
    for opts in ((), ("D","z","bias","softplus")):
        inp = make_inputs(2, 70, L, 16, seed=L+len(opts), options=opts, delta_range=(1e-3, 5.0))
        names = [k for k,v in inp.items() if isinstance(v, torch.Tensor)]
        res = {}
        for impl, dev, dt in (("reference","cpu",torch.float64), ("triton","cuda",torch.float32), ("chunked","cuda",torch.float32)):
            lv = {k: v.detach().to(dev, dt).clone().requires_grad_(True) if k in names else v for k,v in inp.items()}
            o = selective_scan(**lv, impl=impl)
            w = torch.linspace(-1,1,o.numel(),dtype=torch.float64).view_as(o).to(dev, dt)
            (o*w).sum().backward()
            grads = {k: (lv[k].grad if lv[k].grad is not None else torch.zeros_like(lv[k])).cpu().double() for k in names}
            res[impl] = (o.detach().cpu().double(), grads)
        for impl in ("triton","chunked"):
            grad_errors = {k: "%.1e" % rel_error(res[impl][1][k], res["reference"][1][k]) for k in names}
            print(L, opts, impl, "out %.1e" % rel_error(res[impl][0], res["reference"][0]), grad_errors, flush=True)
