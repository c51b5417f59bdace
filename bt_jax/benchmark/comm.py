"""On-paper time per step of the earlier work's model on 8 GPUs: exact vs PowerSGD.

Every assumption is a named constant below and is printed with the table (ASSUMPTIONS).
"""

from __future__ import annotations

from typing import Dict, Optional

ASSUMPTIONS = """\
* Ring all-reduce of S bytes over n GPUs moves 2(n-1)/n * S over every link, so it takes
  2(n-1)/n * S / B on links of bandwidth B, plus 2(n-1) hops of latency per all-reduce.
  Across nodes the slowest link is the node's network card; with one card per node the
  ring crosses it once each way, so B is the card's rate.
* Gradients are all-reduced in float32 (4 bytes a float), one bucket per all-reduce: the
  exact reducer needs one all-reduce, PowerSGD two (P, then Q). PowerSGD's own compute
  (matrix products, orthogonalisation) is not counted, except in the column that carries
  over the overhead measured on this CPU.
* Compute time comes from a GPU measurement when the run has one; otherwise from NVIDIA's
  published single-GPU ResNet-50 v1.5 training throughput (224 px, mixed precision),
  scaled by the ratio of our step's FLOPs per image to ResNet-50's.
* No overlap of communication with the backward pass (our pmap step reduces after it):
  step = compute + communication, an upper bound; DDP-style overlap would hide up to
  min(compute, communication).
* Hop latency: 5 us NVLink, 10 us PCIe, 50 us Ethernet (TCP)."""

GPUS = 8
BYTES_PER_FLOAT = 4
# Per link; 'GB' is 1e9 bytes. Ethernet rates are bits per second, hence / 8.
LINKS = {
    "NVLink, one node (300 GB/s)": 300e9,
    "PCIe, one node (25 GB/s)": 25e9,
    "100 Gb/s Ethernet, across nodes": 100e9 / 8,
    "25 Gb/s Ethernet, across nodes": 25e9 / 8,
}
# Latency per ring hop (assumed: a few us on NVLink/PCIe, tens of us over TCP/Ethernet).
HOP_LATENCY_S = {
    "NVLink, one node (300 GB/s)": 5e-6,
    "PCIe, one node (25 GB/s)": 10e-6,
    "100 Gb/s Ethernet, across nodes": 50e-6,
    "25 Gb/s Ethernet, across nodes": 50e-6,
}
# NVIDIA DeepLearningExamples, PyTorch ResNet50 v1.5 README, "Training performance
# results" (pytorch-21.03 container), 1 GPU, mixed precision, 224 px.
PUBLISHED_IMAGES_PER_S = {"A100 80GB": 2470.0, "V100 16GB": 1200.0}
# ResNet-50 v1.5 at 224 px: ~4.1 GMACs forward; training ~3x forward; 2 FLOPs a MAC.
RESNET50_TRAIN_FLOPS_PER_IMAGE = 3 * 2 * 4.1e9
# The earlier work's global batch: 512 pairs = 1024 images a step over 8 GPUs.
EARLIER_GLOBAL_PAIRS = 512


def ring_allreduce_s(floats: float, bandwidth: float, latency: float, *,
                     all_reduces: int = 1, gpus: int = GPUS) -> float:
    """Seconds for ``all_reduces`` ring all-reduces moving ``floats`` floats in all."""
    size = floats * BYTES_PER_FLOAT
    return 2 * (gpus - 1) / gpus * size / bandwidth + all_reduces * 2 * (gpus - 1) * latency


def assumed_compute_s(flops_per_image: float, gpu: str = "A100 80GB",
                      pairs_per_gpu: float = EARLIER_GLOBAL_PAIRS / GPUS) -> float:
    """Compute seconds per step on one GPU from the published throughput, scaled by FLOPs."""
    reference_s_per_image = 1.0 / PUBLISHED_IMAGES_PER_S[gpu]
    return 2 * pairs_per_gpu * reference_s_per_image * flops_per_image / RESNET50_TRAIN_FLOPS_PER_IMAGE


def step_model(exact_floats: float, powersgd_floats: Dict[str, float],
               compute_s: float) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{link: {reducer: {'comm_s', 'step_s'}}} for the exact and PowerSGD reducers."""
    out = {}
    for link, bandwidth in LINKS.items():
        latency = HOP_LATENCY_S[link]
        rows = {"exact": ring_allreduce_s(exact_floats, bandwidth, latency)}
        for rank, floats in powersgd_floats.items():
            rows[f"PowerSGD r{rank}"] = ring_allreduce_s(floats, bandwidth, latency,
                                                         all_reduces=2)
        out[link] = {name: {"comm_s": comm, "step_s": compute_s + comm}
                     for name, comm in rows.items()}
    return out


def compute_source(gpu_step_s: Optional[float], flops_per_image: float) -> Dict[str, object]:
    """Compute time per step and where it comes from: a GPU measurement if one exists."""
    if gpu_step_s is not None:
        return {"compute_s": gpu_step_s, "source": "measured on a GPU in this run"}
    return {"compute_s": assumed_compute_s(flops_per_image),
            "source": ("ASSUMED: NVIDIA's published 1x A100 80GB ResNet-50 v1.5 mixed-precision "
                       f"training rate ({PUBLISHED_IMAGES_PER_S['A100 80GB']:.0f} img/s at 224 px), "
                       "scaled by our step's XLA FLOPs per image / "
                       f"{RESNET50_TRAIN_FLOPS_PER_IMAGE / 1e9:.1f} GFLOP, "
                       f"{2 * EARLIER_GLOBAL_PAIRS // GPUS} images per GPU per step")}
