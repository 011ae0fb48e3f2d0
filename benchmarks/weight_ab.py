"""Device A/B: a channels_last_3d weight read in place against the same plan packing a
contiguous one (bfloat16, channels-last input and result, as the bench's channels-last
cells), cuDNN in the same process; the forward's GPU µs (primed) and host µs, and the input
gradient's GPU µs; sweep shapes 2-6.  Each result is checked first (the same bits both ways).

    python benchmarks/weight_ab.py
"""
import torch
import torch.nn.functional as F

import phaseconv
from phaseconv.bench import SWEEP, median_gpu_us, median_host_us
from phaseconv.checks import check_conv_transpose3d
from phaseconv.engines import cuda

torch.backends.cudnn.allow_tf32 = False
cl = torch.channels_last_3d
dt = torch.bfloat16


def row(sh) -> None:
    """One sweep shape's line."""
    x = torch.randn(sh.input_shape(), device="cuda", dtype=dt).contiguous(memory_format=cl)
    w = (torch.randn((sh.in_channels, sh.out_channels // sh.groups) + sh.kernel, device="cuda")
         / 30).to(dt)
    wc = w.contiguous(memory_format=cl)
    kw = sh.functional_args()
    args = check_conv_transpose3d(x, wc, None, sh.stride, sh.padding, sh.output_padding,
                                  sh.groups, (1, 1, 1))
    inp = cuda.weight_in_place(args, x.shape[0], dt, x.device, wc, True, "auto", True)
    desc = cuda.describe(args, x.shape[0], dt, x.device, True, "auto", True, wc.stride())
    def f_cl():
        return cuda.forward(x, wc, None, args, out_channels_last=True)
    def f_pk():
        return cuda.forward(x, w, None, args, out_channels_last=True)
    def f_dnn():
        return F.conv_transpose3d(x, wc, **kw)
    y_cl = f_cl()
    same = torch.equal(y_cl, f_pk())
    ref = F.conv_transpose3d(x.float(), w.float(), **kw)
    err = ((y_cl.float() - ref).abs().max() / ref.abs().max()).item()
    g = [median_gpu_us(f, 30, 5) for f in (f_cl, f_pk, f_dnn)]
    m_cl = phaseconv.ConvTranspose3d(**sh.layer_args(), bias=False, device="cuda",
                                     dtype=dt).to(memory_format=cl)
    with torch.no_grad():
        m_cl.weight.copy_(w)
        gm = median_gpu_us(lambda: m_cl(x), 30, 5)
        h = median_host_us([f_cl, f_pk, f_dnn, lambda: m_cl(x)], 40, 5)
    gy = torch.randn(ref.shape, device="cuda", dtype=dt).contiguous(memory_format=cl)
    gi_inp = cuda.grad_input_weight_in_place(args, x.shape[0], dt, x.device, wc)
    def b_cl():
        return cuda.backward(gy, x, wc, args, need_weight=False)[0]
    def b_pk():
        return cuda.backward(gy, x, w, args, need_weight=False)[0]
    gi_same = torch.equal(b_cl(), b_pk())
    gb = [median_gpu_us(f, 30, 5) for f in (b_cl, b_pk)]
    gdesc = cuda.describe_backward(args, x.shape[0], dt, x.device, wc.stride())[0]
    print(f"shape {sh.name} grad_input: in_place={gi_inp} same_bits={gi_same} | GPU µs "
          f"in-place {gb[0]:.1f} packed {gb[1]:.1f} | {gdesc}", flush=True)
    print(f"shape {sh.name}: in_place={inp} same_bits={same} err={err:.1e} | GPU µs in-place "
          f"{g[0]:.1f} packed {g[1]:.1f} cuDNN {g[2]:.1f} module(cl) {gm:.1f} | host µs "
          f"{h[0]:.1f} {h[1]:.1f} {h[2]:.1f} module {h[3]:.1f} | {desc}", flush=True)


for shape in SWEEP[1:6]:
    row(shape)
