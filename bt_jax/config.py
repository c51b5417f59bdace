"""The base experiment configuration: the earlier work's real MLFW settings.

Experiment files in ``configs/`` call :func:`base_config` and override a few fields.
Derived values (steps per epoch, the scaled learning rate, warm-up steps) are computed
by the trainer, never stored here.
"""

from __future__ import annotations

import importlib.util
import os

from ml_collections import config_dict


def base_config() -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.seed = 0
    # Devices the step is pmap'd over, over all processes; on CPU the scripts simulate them.
    config.num_devices = 8

    # Multi-process runs (jax.distributed). Empty address: single process, unless a SLURM
    # job with several tasks is detected, whose environment then supplies all three.
    config.distributed = config_dict.ConfigDict()
    config.distributed.coordinator_address = ""  # e.g. "10.0.0.1:1234"
    config.distributed.num_processes = config_dict.placeholder(int)
    config.distributed.process_id = config_dict.placeholder(int)
    config.distributed.cpu_collectives = "gloo"  # CPU backend only; GPUs use NCCL

    config.data = config_dict.ConfigDict()
    # 'folder' (<split dir>/<Name>/<Name>_SSSS_VVVV.jpg), 'synthetic', 'mlfw_release'
    # (manual_dir/aligned/ + pairs.txt) or 'tfds' (the mlfw builder, from manual_dir).
    config.data.source = "folder"
    config.data.train_dir = "../shared/data/mlfw/train"
    # More images of train_dir's people, e.g. the same crops re-aligned from MTCNN's
    # landmarks (scripts/align.py --crops): more variants of the same source photos.
    config.data.train_extra_dir = ""
    config.data.val_dir = "../shared/data/mlfw/val"
    # Held-out identities for the end-of-run 1-NN; '' uses val_dir.
    config.data.eval_dir = ""
    config.data.image_size = 244
    config.data.normalization = "vggface2"  # matches the VGGFace2 weights; or 'mlfw'
    config.data.pair_sampler = "standard"  # 'standard', 'all_pairs', 'source_aware', 'same_source'
    config.data.min_images_per_identity = 2
    # Raw data for 'mlfw_release' and 'tfds' (either layout); '' for 'tfds' = train_dir's parent.
    config.data.manual_dir = ""
    config.data.tfds_dir = ""  # prepared ArrayRecord files; '' = <workdir>/tfds
    # Side of the aligned face crops the data holds on disk (MLFW's: 112), which identify
    # insists on (a whole photo squashed to it would silently give a wrong name); 0: the
    # same as image_size. Crops are resized to image_size on loading.
    config.data.crop_size = 112
    config.data.exclude_file = ""  # from scripts/clean_data.py; '' excludes nothing
    # Tuning: hold out this fraction of the train identities (fixed by config.seed) and
    # use them, not eval_dir/val_dir, for the 1-NN checks during and after training.
    config.data.holdout_fraction = 0.0
    # Cached activations of a frozen trunk (config.model.freeze_until); '' = the bt_jax
    # cache ($BT_JAX_CACHE or ~/.cache/bt_jax).
    config.data.trunk_cache_dir = ""
    config.data.loader = "stream"  # 'stream' (grain decode workers) or 'preload' (all in RAM)
    config.data.workers = 0  # decode threads; 0 = 2 per core, at most 16
    config.data.prefetch = 2  # batches decoded (and put on the devices) ahead of the step
    config.data.synthetic = config_dict.ConfigDict()
    config.data.synthetic.train_identities = 400
    config.data.synthetic.val_identities = 60
    config.data.synthetic.eval_identities = 100
    config.data.synthetic.sources_per_identity = 4
    config.data.synthetic.masked_variants = 2
    config.data.synthetic.seed = 1234

    config.augment = config_dict.ConfigDict()
    config.augment.flip = True
    config.augment.crop_scale = 1.0  # max zoom of a random crop; 1.0 disables it
    config.augment.brightness = 0.0  # max relative brightness change
    config.augment.contrast = 0.0
    config.augment.grayscale_prob = 0.0
    # The paper's full recipe instead of the options above (bt_jax/data/augment.py).
    config.augment.barlow_twins = False
    # Smallest area fraction the recipe's random resized crop keeps (the paper: 0.08).
    config.augment.crop_area_min = 0.08
    config.augment.mask_prob = 0.0  # chance of a synthetic mask on the second view

    config.model = config_dict.ConfigDict()
    config.model.arch = "resnet50"  # or 'small' (sized for CPU training) or 'tiny' (tests)
    config.model.pool_window = 7
    config.model.projector = "2048-4096-8192"
    config.model.dtype = "float32"  # compute dtype; params and loss stay float32
    # Inception-ResNet only. Freeze every layer up to and including this one (e.g.
    # 'Mixed_7a'): its activations are computed once per image and cached (bt_jax/network/trunk.py),
    # and only the layers after it train. '' trains the whole backbone.
    config.model.freeze_until = ""
    # BatchNorm of the backbone layers that train: 'train' (batch statistics), 'inference'
    # (running statistics throughout: a fixed affine map), or 'recalibrate' (batch
    # statistics, after setting the running ones from training data at step 0 so that a
    # folded BN starts where the pretrained network was; bt_jax/network/trunk.py).
    config.model.bn_mode = "train"
    # Inception-ResNet only: the backbone's output, 'bottleneck' (512-d) or 'pooled' (1792-d).
    config.model.output = "bottleneck"
    # Inception-ResNet only: recompute each block's activations in the backward pass rather
    # than keep them (same loss and gradients, more compute; on FaceNet no memory saved).
    config.model.remat = False

    config.loss = config_dict.ConfigDict()
    config.loss.lambd = 0.0051

    config.optim = config_dict.ConfigDict()
    # 'lars' (the reference: lr_weights / lr_biases x batch/256) or 'adamw' (config.optim.lr;
    # weight decay on weights only), both with warm-up + cosine.
    config.optim.name = "lars"
    config.optim.lr = 1e-3  # AdamW's peak learning rate
    config.optim.batch_size = 512  # global, over all devices
    config.optim.lr_weights = 0.2
    config.optim.lr_biases = 0.0048
    config.optim.weight_decay = 1e-6
    config.optim.eta = 0.001
    config.optim.momentum = 0.9
    config.optim.warmup_epochs = 10.0  # a float: part of an epoch is allowed
    config.optim.end_factor = 0.001
    # None: the backbone learns at the same rate; 0.0 freezes it.
    config.optim.backbone_lr_scale = config_dict.placeholder(float)

    config.reducer = config_dict.ConfigDict()
    config.reducer.name = "exact"  # 'exact' (pmean) or 'powersgd' (low-rank, see powersgd.py)
    config.reducer.powersgd = config_dict.ConfigDict()
    config.reducer.powersgd.rank = 4  # rank of each compressed gradient matrix
    # Exact all-reduce for this many steps first, while gradients are large and changing.
    config.reducer.powersgd.start_iter = 100
    # Tensors whose n*m / ((n+m)*rank) is below this stay on the exact all-reduce.
    config.reducer.powersgd.min_compression_rate = 2.0
    config.reducer.powersgd.error_feedback = True  # carry what rank-r missed to the next step
    config.reducer.powersgd.warm_start = True  # reuse last step's Q: power iteration over steps
    config.reducer.powersgd.orth_eps = 1e-8  # Gram-Schmidt column-norm floor (zero columns)
    config.reducer.powersgd.seed = 0  # initial Q, identical on every device
    config.reducer.powersgd.power_iterations = 1  # each extra one sends another P and Q

    config.train = config_dict.ConfigDict()
    config.train.epochs = 100
    config.train.log_every_steps = 10
    config.train.checkpoint_every_steps = 0  # 0: only at the end of each epoch
    config.train.keep_checkpoints = 2
    config.train.progress = True
    # metrics.jsonl's records also as TensorBoard event files in the workdir
    # (`tensorboard --logdir runs/`); process 0 writes them, with tensorboardX.
    config.train.tensorboard = True

    config.evals = evals_config()

    # Putting a trained network to use (scripts/identify.py, docs/identify.md).
    config.identify = config_dict.ConfigDict()
    config.identify.classifier = "1nn"  # '1nn', 'knn' (distance-weighted) or 'svm' (linear)
    config.identify.k = 5  # neighbours of 'knn'
    config.identify.top_k = 5  # identities listed per query image
    # Open-set false-positive identification rates a threshold is calibrated for; the first
    # is the one a query applies.
    config.identify.fpir = (0.01, 0.001)
    # Share of the enrolled folder's identities held out (by config.seed) as strangers to
    # calibrate the threshold on; they are not enrolled. 0: no threshold.
    config.identify.holdout_fraction = 0.0

    # Finding faces in ordinary photos (MTCNN; scripts/align.py, identify.py --photos,
    # docs/detection.md). The defaults are MTCNN's usual ones.
    config.detect = config_dict.ConfigDict()
    config.detect.min_face_size = 20  # pixels, in the photo as detection sees it
    config.detect.scale_factor = 0.709  # between pyramid levels
    config.detect.thresholds = (0.6, 0.7, 0.8)  # face probability kept by P-, R-, O-Net
    # Overlap (IoU) above which the lower-scoring box goes: P-Net within a scale, across
    # scales, R-Net, O-Net (overlap over the smaller box).
    config.detect.nms = (0.5, 0.7, 0.7, 0.7)
    # Longer side a photo is downscaled to for detection (boxes in the photo's pixels).
    config.detect.max_side = 1280
    # Average O-Net's landmarks with those it places on the mirrored face (one more O-Net
    # pass), and align crops from all five landmarks ('five') or the eyes alone ('eyes').
    # Both options bring MTCNN's crops closer to MLFW's alignment, yet neither helped the
    # recogniser (docs/detection.md, "Alignment from the eyes"): off by default.
    config.detect.mirror_landmarks = False
    config.detect.align_from = "five"

    # 'scratch' for random initialisation, or a folder written by scripts/convert_weights.py.
    config.init = "converted_weights/vggface2_resnet50_ft"

    config.eval = config_dict.ConfigDict()
    config.eval.batch_size = 256
    config.eval.embedding = "backbone"  # or 'projector'
    config.eval.metric = "cosine"  # or 'euclidean'
    config.eval.seed = 0
    return config


def _eval(kind: str, *, every_epochs: int = 0, at: str = "") -> config_dict.ConfigDict:
    return config_dict.ConfigDict({"kind": kind, "every_epochs": every_epochs, "at": at})


def evals_config() -> config_dict.ConfigDict:
    """What the training loop evaluates, and when (bt_jax/train/evaluators.py).

    Each entry: ``kind`` ('identification': 1-NN on the eval identities; 'val_loss': the
    Barlow Twins loss on fixed val pairs; 'raw_pixels': 1-NN on pixels, no network), and
    a schedule: ``every_epochs`` N (after every Nth epoch, logged to metrics.jsonl as
    ``<name>_<metric>``) or ``at`` 'start' (the untrained network, also when resuming)
    or 'end'; those go to results.json under ``<name>``. ``val_loss`` also picks the
    best checkpoint.
    """
    return config_dict.ConfigDict({
        "untrained": _eval("identification", at="start"),
        "val": _eval("val_loss", every_epochs=1),
        # A learning curve: 1-NN every N epochs; 0 turns it off.
        "knn": _eval("identification", every_epochs=0),
        "trained": _eval("identification", at="end"),
        "raw_pixels": _eval("raw_pixels", at="end"),
    })


def mild_face_augment(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """Aligned faces keep their layout, so only small crops and photometric changes; the
    mask, not the augmentation, is the transformation the network must learn to ignore."""
    config.augment.crop_scale = 1.2
    config.augment.brightness = 0.2
    config.augment.contrast = 0.2
    config.augment.grayscale_prob = 0.1
    return config


def facenet_model(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """FaceNet's Inception-ResNet-v1 from the converted CASIA-WebFace graph, with its input:
    160 px (MLFW's 112 px crops resized on loading), RGB, (x - 127.5) / 128."""
    config.data.image_size = 160
    config.data.normalization = "facenet"
    config.model.arch = "inception_resnet_v1"
    config.init = "converted_weights/facenet_casia"
    return config


def sibling_config(here: str, name: str) -> config_dict.ConfigDict:
    """``get_config()`` of the config file ``name`` in the folder of the file ``here``,
    loaded by path as ``--config`` loads it: a variant in configs/ (no package) builds on
    its base recipe with ``sibling_config(__file__, "<base>.py")``."""
    path = os.path.join(os.path.dirname(os.path.abspath(here)), name)
    spec = importlib.util.spec_from_file_location(f"bt_jax_config_{name[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
