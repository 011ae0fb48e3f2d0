"""The benchmark's own arithmetic (``phaseconv.bench``): the work a sweep shape does, the
hardware floor it is measured against, and the variants ``--dtypes`` names."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from phaseconv import bench


@pytest.mark.parametrize("shape", bench.SWEEP, ids=lambda s: s.name.split()[0])
def test_work_counts_the_useful_macs_and_the_tensors_bytes(shape):
    macs, nbytes = bench._work(shape, torch.float32)
    w = torch.empty((shape.in_channels, shape.out_channels // shape.groups) + shape.kernel,
                    device="meta")
    x = torch.empty(shape.input_shape(), device="meta")
    y = F.conv_transpose3d(x, w, None, shape.stride, shape.padding, shape.output_padding,
                           shape.groups)
    assert nbytes == 4 * (x.numel() + w.numel() + y.numel())
    # every output voxel meets, per axis, the taps of its phase (k with o + p - k = 0 mod s;
    # at the border some read the input's zero padding), times the channels
    per_axis = [sum(sum(1 for k in range(kk) if (o + p - k) % s == 0) for o in range(n_out))
                for kk, s, p, n_out in zip(shape.kernel, shape.stride, shape.padding,
                                           y.shape[2:])]
    assert macs == (shape.batch * math.prod(per_axis) * shape.out_channels
                    * (shape.in_channels // shape.groups))


def test_floor_is_the_slower_of_the_tensor_pipe_and_dram():
    # 1e12 MACs at 989.4 TFLOP/s: 2.02 ms; 1 GB at 3.35 TB/s: 0.30 ms
    assert bench.floor_us("NVIDIA H100 80GB HBM3", torch.bfloat16, 10**12, 10**9) == \
        pytest.approx(2e12 / 989.4e12 * 1e6)
    assert bench.floor_us("NVIDIA H100 80GB HBM3", torch.bfloat16, 10**6, 10**9) == \
        pytest.approx(1e9 / 3.35e12 * 1e6)
    # float32 is 3xTF32: three TF32 products a MAC
    assert bench.floor_us("NVIDIA H200", torch.float32, 10**12, 0) == \
        pytest.approx(3 * 2e12 / 494.7e12 * 1e6)
    # the PCIe H100 is its own row, not the SXM one
    assert bench.floor_us("NVIDIA H100 PCIe", torch.float16, 10**12, 0) == \
        pytest.approx(2e12 / 756e12 * 1e6)
    assert math.isnan(bench.floor_us("NVIDIA H200", torch.float64, 10**12, 0))
    assert math.isnan(bench.floor_us("Some GPU", torch.bfloat16, 10**12, 0))


def test_variants_by_name():
    v = bench.Variant.parse("bfloat16-cl")
    assert (v.dtype, v.channels_last, v.name) == (torch.bfloat16, True, "bfloat16 cl")
    assert bench.Variant.parse("float32") == bench.Variant(torch.float32, False)
    assert v.fmt(torch.zeros(1, 2, 3, 4, 5)).is_contiguous(memory_format=torch.channels_last_3d)
    with pytest.raises(ValueError, match="float33"):
        bench.Variant.parse("float33")


def test_floor_text_says_how_much_of_the_floor_a_time_reaches():
    assert bench._floor_text(200.0, 50.0) == "50.0 (25%)"
    assert bench._floor_text(200.0, float("nan")) == "-"


def test_alternating_times_calls_each_function_in_turn():
    calls = []
    times = bench.alternating_times([lambda: calls.append("a"), lambda: calls.append("b")],
                                    repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert [len(t) for t in times] == [3, 3] and all(v >= 0 for t in times for v in t)


def test_loop_walls_take_turns_block_by_block(monkeypatch):
    """The loop's wall time: blocks of steps, the functions in turn, each one's median."""
    samples = {"a": iter([5.0, 1.0, 3.0]), "b": iter([2.0, 9.0, 4.0])}
    seen = []

    def fake_loop_us(fn, steps, warmup):
        name = fn()
        seen.append((name, steps, warmup))
        return next(samples[name])

    monkeypatch.setattr(bench, "loop_us", fake_loop_us)
    walls = bench.loop_walls_us([lambda: "a", lambda: "b"], steps=30, blocks=3, warmup=2)
    assert seen == [("a", 30, 2), ("b", 30, 2)] * 3
    assert walls == [3.0, 4.0]


def test_cpu_tables_on_a_tiny_layer():
    """The CPU section's rows and tables, run for real on a layer small enough for CI."""
    shape = bench.Shape("t", 1, 2, 2, 1, (3, 3, 3), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))
    row = bench.bench_cpu_forward(shape, repeats=2, warmup=1)
    assert row.threads == torch.get_num_threads() and row.max_abs_err < 1e-5
    assert row.torch_ms > 0 and row.phaseconv_ms > 0
    text = bench.cpu_forward_table([row._replace(torch_ms=3.0, phaseconv_ms=2.0)])
    assert "| t | 1, 2->2, g1, 3x3x3, k3, s2, p1, op1 |" in text and "| 1.50x |" in text
    small = bench.bench_cpu_small(shape, repeats=2, warmup=1)
    assert [r.what for r in small] == ["module forward", "forward + backward"]
    text = bench.cpu_small_table(shape, [small[0]._replace(torch_us=10.0, phaseconv_us=15.0)])
    assert "| module forward | 10.0 | 15.0 | 1.50x |" in text


def test_cpu_section_writes_its_table(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "SWEEP", [bench.Shape("1", 1, 2, 2, 1, (2, 2, 2), (2, 2, 2),
                                                     (2, 2, 2), (0, 0, 0), (0, 0, 0))])
    assert bench.main(["--device", "cpu", "--repeats", "1", "--warmup", "0",
                       "--out", str(tmp_path)]) == 0
    text = (tmp_path / "results-cpu.md").read_text()
    assert "torch threads" in text and "| 1 | 1, 2->2, g1, 2x2x2" in text
    assert "| forward + backward |" in text


def test_client_times_blocks_of_steps_and_reports_their_median(tmp_path):
    """A client configuration takes its turns a block of steps at a time (the lock file of
    its barrier) and reports the median of its blocks' step times and their range; run for
    real on the CPU at a small size."""
    pytest.importorskip("monai")
    from phaseconv import bench_client

    r = bench_client.run_one("unet", "phaseconv", "fp32", "eager", steps=1, warmup=0,
                             size=32, batch=1, barrier=str(tmp_path / "barrier"), parties=1,
                             device="cpu", blocks=3)
    lo, hi = r["step_ms_range"]
    assert 0 < lo <= r["step_ms"] <= hi
    assert r["converted"] > 0 and r["transposed_share"] is None
    torch_row = dict(r, impl="torch", step_ms=6.0, step_ms_range=[5.0, 9.0], converted=0)
    ours = dict(r, step_ms=4.0, step_ms_range=[3.5, 4.5])
    text = bench_client.table([torch_row, ours])
    assert "| unet | fp32 | eager | 6.0 | 4.0 | 1.50x | 5.0-9.0 / 3.5-4.5 |" in text, text


def test_client_section_runs_pairs_side_by_side(monkeypatch, tmp_path):
    """The client section spawns the compiled configurations in groups of whole (torch,
    phaseconv) pairs and the eager ones in pairs, each meeting at a barrier of its group with
    the blocks asked for, and tables what they wrote."""
    from phaseconv import bench_client

    spawned = []

    class Done:
        def wait(self):
            return 0

    def fake_spawn(config, out, extra):
        net, impl, precision, mode = config.split(",")
        spawned.append((config, extra[extra.index("--barrier") + 1].rsplit("/", 1)[-1],
                        extra[extra.index("--parties") + 1], extra[extra.index("--blocks") + 1]))
        with open(out, "w") as f:
            json.dump(dict(net=net, impl=impl, precision=precision, mode=mode, converted=4,
                           first_loss=1.0, step_ms=2.0 if impl == "torch" else 1.0,
                           step_ms_range=[1.0, 3.0], first_step_s=1.0,
                           transposed_share=None), f)
        return Done()

    monkeypatch.setattr(bench_client, "_spawn", fake_spawn)
    text = bench_client.run_section("nets=unet,precisions=fp32+amp,blocks=3,parallel=3")
    assert spawned == [
        ("unet,torch,fp32,compile", "barrier0", "2", "3"),
        ("unet,phaseconv,fp32,compile", "barrier0", "2", "3"),
        ("unet,torch,amp,compile", "barrier2", "2", "3"),
        ("unet,phaseconv,amp,compile", "barrier2", "2", "3"),
        ("unet,torch,fp32,eager", "eager0", "2", "3"),
        ("unet,phaseconv,fp32,eager", "eager0", "2", "3"),
        ("unet,torch,amp,eager", "eager1", "2", "3"),
        ("unet,phaseconv,amp,eager", "eager1", "2", "3"),
    ]
    assert text.count("| 2.0 | 1.0 | 2.00x | 1.0-3.0 / 1.0-3.0 |") == 4, text
