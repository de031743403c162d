"""What both flow models share: LR padding, checkpoint checks, and comparing SR methods.

A flow model evaluates several *methods* on every validation image (``tau<t>`` temperature
sampling and, for the learned prior, ``prior``), each with the same metrics, its own images and a
count of non-finite images; test runs write per-image CSVs and summary tables
(:mod:`flowprior_plugin.result_tables`). A gt that is a window of a larger HR (``hr_size`` and
``window`` from ``ArbitraryScaleSRDataset``) reaches the flow as an ``HRWindow`` ``out_size``.
"""

from __future__ import annotations

import math
import os.path as osp
from collections import OrderedDict
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.archs import build_network
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from torch import Tensor

from flowprior_plugin.checkpoints import checked_state_dict
from flowprior_plugin.errors import CheckpointMismatchError, MissingWeightsError, OptionError
from flowprior_plugin.flow_protocol import FlowSRProtocol, HRWindow, OutputSize, output_hw
from flowprior_plugin.result_tables import RunTable, format_summary, method_name, summarize, write_test_tables
from flowprior_plugin.tiling import TileInputs, TileOptions, predict_tiled, predict_whole

DEFAULT_TEMPERATURES = (0.9,)
# Metrics that score an SR without a GT (computed on LR-only test sets too).
NO_GT_METRICS = frozenset({'calculate_lr_psnr', 'calculate_grid_seam', 'calculate_grid_periodicity'})


def pad_to_multiple(lq: Tensor, multiple: int) -> Tensor:
    """Reflect-pad the bottom/right of an LR batch so both sides are multiples of ``multiple``.

    The SRFlow release does the same and crops the SR back (see :meth:`crop_to_lq`)."""
    pad_h, pad_w = (-lq.shape[-2]) % multiple, (-lq.shape[-1]) % multiple
    if pad_h == 0 and pad_w == 0:
        return lq
    mode = 'reflect' if pad_h < lq.shape[-2] and pad_w < lq.shape[-1] else 'replicate'
    return F.pad(lq, (0, pad_w, 0, pad_h), mode=mode)


def padded_out_size(out_size: OutputSize, lq: Tensor, padded_lq: Tensor, flow: FlowSRProtocol) -> OutputSize:
    """The flow's ``out_size`` for ``padded_lq`` (``lq`` padded at the bottom/right) that puts the
    asked HR ``out_size`` at its top left, on the same HR pixel grid.

    The padded LR covers more area, so the HR grows by the padded / unpadded ratio of each side:
    an (H, W) size, or the whole images of :class:`HRWindow` windows (the windows themselves stay
    where and as large as they are). The scale, and so where every HR pixel samples the LR, is
    unchanged only when the grown sides are whole pixels.

    Raises:
        ValueError: A grown side is not a whole number of pixels (one line naming the flow, its
            ``lr_multiple`` and the LR shape).
    """
    lr, padded = tuple(lq.shape[-2:]), tuple(padded_lq.shape[-2:])
    if out_size is None or padded == lr:
        return out_size
    window = out_size if isinstance(out_size, HRWindow) else None
    full = window.full_size if window is not None else torch.tensor([output_hw(out_size)])
    grown = full * torch.tensor(padded, device=full.device)
    lr_sides = torch.tensor(lr, device=full.device)
    if bool((grown % lr_sides != 0).any()):
        asked = [tuple(size) for size in full.tolist()]
        needed = [tuple(round(side, 3) for side in size) for size in (grown / lr_sides).tolist()]
        raise ValueError(
            f'{type(flow).__name__} (lr_multiple {flow.lr_multiple}) cannot predict HR {", ".join(map(str, asked))} '
            f'from an LR of shape {tuple(lq.shape)} exactly: the LR padded to {padded} covers HR '
            f'{", ".join(map(str, needed))}, not whole pixels; use LR sides that are multiples of {flow.lr_multiple}'
        )
    grown = torch.div(grown, lr_sides, rounding_mode='floor')
    if window is not None:
        return HRWindow(window.size, grown, window.offset)
    return int(grown[0, 0]), int(grown[0, 1])


class BaseFlowModel(SRModel):
    """Shared machinery of :class:`FlowLikelihoodModel` and :class:`FlowPriorModel` (not registered).

    Subclasses define :attr:`flow`; a model with methods beyond temperature sampling extends
    :meth:`evaluation_methods` and :meth:`method_latents` (and :attr:`evaluated_network`).
    """

    # Where the current gt sits in the HR image its LR covers; None: the gt is that whole image.
    # Set by every feed_data.
    hr_window: HRWindow | None = None

    # ---------------------------------------------------------------- checkpoints
    def _print_different_keys_loading(self, crt_net, load_net, strict=True):
        # BasicSR's load_network calls this between reading the file (param_key, 'module.' removed)
        # and net.load_state_dict(load_net): the one place to put a released layout into ours and
        # to say what is wrong in one line before BasicSR prints a wall of mismatched keys. The
        # dict is rewritten in place because BasicSR loads that very object (as it does itself
        # when it renames reshaped keys here).
        ours = checked_state_dict(self.get_bare_model(crt_net), load_net, strict)
        if ours is not load_net:
            converted = dict(ours)
            load_net.clear()
            load_net.update(converted)
        super()._print_different_keys_loading(crt_net, load_net, strict)

    def load_network(self, net, load_path, strict=True, param_key='params'):
        try:
            super().load_network(net, load_path, strict, param_key)
        except KeyError as exc:
            raise CheckpointMismatchError(
                f'{load_path}: has no entry {exc} (it holds {_top_keys(load_path)}); set the matching '
                "path.param_key_* option (use '~' for a raw state dict such as the official SRFlow files)"
            ) from None
        except CheckpointMismatchError as exc:
            raise CheckpointMismatchError(f'{load_path}: {exc}') from None

    # ---------------------------------------------------------------- training
    def setup_ema(self) -> None:
        """BasicSR's EMA copy of ``network_g`` (``train.ema_decay`` > 0), loaded from
        ``params_ema`` when a pretrained file is given, else copied from ``net_g``."""
        self.ema_decay = self.opt['train'].get('ema_decay', 0)
        if self.ema_decay <= 0:
            return
        get_root_logger().info(f'Use Exponential Moving Average with decay: {self.ema_decay}')
        self.net_g_ema = build_network(self.opt['network_g']).to(self.device)
        load_path = self.opt['path'].get('pretrain_network_g')
        if load_path is not None:
            strict = self.opt['path'].get('strict_load_g', True)
            self.load_network(self.net_g_ema, load_path, strict, 'params_ema')
        else:
            self.model_ema(0)
        self.net_g_ema.eval()

    def apply_loss(self, loss: Tensor, loss_dict: OrderedDict, current_iter: int) -> None:
        """The end of every training step: backward and optimizer step unless ``loss`` is not
        finite (then the step is skipped with a warning), BasicSR's loss log and the EMA update.

        Under distributed training the ranks decide together (an all-reduce of who saw a
        non-finite loss): a rank skipping alone would leave the others waiting in DDP's gradient
        all-reduce forever. Every rank then skips the step, and the warning names the rank(s)."""
        bad_ranks = _nonfinite_ranks(loss, self.opt)
        if not bad_ranks:
            loss.backward()
            self.optimizer_g.step()
        elif self.opt.get('dist'):
            ranks = ', '.join(map(str, bad_ranks))
            get_root_logger().warning(
                f'iter {current_iter}: non-finite loss on rank(s) {ranks}, step skipped on every rank'
            )
        else:
            get_root_logger().warning(f'iter {current_iter}: non-finite loss, step skipped')
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # ---------------------------------------------------------------- methods
    # Temperatures compared when ``val.temperatures`` is not given.
    default_temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES

    def temperatures(self) -> list[float]:
        val_opt = self.opt.get('val') or {}
        given = val_opt.get('temperatures')
        return [float(t) for t in (self.default_temperatures if given is None else given)]

    def evaluation_methods(self) -> list[str]:
        """Names of the SR methods compared in validation, primary first: here one per temperature."""
        return [method_name(t) for t in self.temperatures()]

    @property
    def evaluated_network(self) -> torch.nn.Module:
        """The network put in eval mode while predicting (the one that is being trained)."""
        return self.flow

    def method_latents(self, method: str, inputs: TileInputs, generator: torch.Generator) -> tuple[list | None, float]:
        """What one method decodes for ``inputs`` (the whole image or a tile): its mean latents
        (None: zeros) and the temperature of the Gaussian noise around them. Here temperature
        sampling (``tau<t>``): no mean, noise at t."""
        return None, {method_name(t): t for t in self.temperatures()}[method]

    def tile_options(self) -> TileOptions | None:
        """``val.tile`` (``{size, overlap}`` in LR pixels), or None: whole images."""
        return TileOptions.from_option((self.opt.get('val') or {}).get('tile'))

    def samples(self) -> int:
        """``val.samples``: draws per method with noise (diversity needs 2 or more). Default: 1."""
        samples = (self.opt.get('val') or {}).get('samples', 1)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise OptionError(f'val.samples must be a positive integer, got {samples!r}')
        return samples

    def predict(
        self,
        lq: Tensor,
        methods: list[str],
        generator: torch.Generator,
        out_size: OutputSize = None,
        progress=None,
    ) -> dict[str, list[Tensor]]:
        """SR images (uncropped, unclamped) of ``lq`` per method, a list of ``val.samples`` draws for
        methods with noise (one image otherwise), in eval mode, of size ``out_size`` (None: the
        flow's ``lq * scale``). One conditioning and one mean per method serve every sample; with
        ``val.tile`` the image is computed tile by tile (:mod:`flowprior_plugin.tiling`)."""
        net = self.evaluated_network
        was_training = net.training
        net.eval()
        named = {name: partial(self.method_latents, name, generator=generator) for name in methods}
        tile = self.tile_options()
        try:
            if tile is None or isinstance(out_size, HRWindow):
                return predict_whole(self.flow, lq, named, generator, out_size, self.samples())
            return predict_tiled(self.flow, lq, named, generator, tile, out_size, self.samples(), progress)
        finally:
            net.train(was_training)

    @property
    def flow(self) -> FlowSRProtocol:
        """The flow network (bare, unwrapped); models call it only through the flow protocol."""
        raise NotImplementedError

    def feed_data(self, data):
        """BasicSR's feed_data, plus the HR windows of datasets that say where ``gt`` sits in the
        HR image the LR covers (``hr_size`` and ``window``, as :class:`ArbitraryScaleSRDataset`).
        An image with NaN or inf pixels is named in a warning, once per image."""
        self._warn_nonfinite_inputs(data)
        super().feed_data(data)
        self.hr_window = None
        if 'gt' in data and 'hr_size' in data and 'window' in data:
            window = HRWindow.from_batch(self.gt, data['hr_size'].to(self.device), data['window'].to(self.device))
            if window.is_whole():
                return
            if not self.flow.arbitrary_scale:
                raise OptionError(
                    f'{type(self.flow).__name__} is a fixed-scale flow: it trains on whole HR crops, but the dataset '
                    f'gives {window.size} windows of larger HR crops (hr_size {window.full_size[0].tolist()}); '
                    'set gt_size = lq_size * scale with scale_min = scale_max = scale'
                )
            self.hr_window = window

    def _warn_nonfinite_inputs(self, data: dict) -> None:
        # Checked on the loader's CPU tensors (no GPU sync); a clean batch costs one isfinite.
        warned = self.__dict__.setdefault('_nonfinite_inputs_warned', set())
        for key in ('lq', 'gt'):
            images = data.get(key)
            if not isinstance(images, Tensor) or bool(torch.isfinite(images).all()):
                continue
            paths = data.get(f'{key}_path') or []
            bad = (~torch.isfinite(images)).flatten(1).sum(1)
            for index in bad.nonzero().flatten().tolist():
                name = paths[index] if index < len(paths) else f'batch item {index}'
                if (key, name) not in warned:
                    warned.add((key, name))
                    get_root_logger().warning(
                        f'input {key} image {name}: {int(bad[index])} non-finite values (NaN/inf); '
                        'a training step with it has a non-finite loss and is skipped'
                    )

    def _out_size(self) -> OutputSize:
        """What the flow's ``out_size`` is for the current batch: the HR windows when the gt is a
        window of a larger HR image, the gt's size for an arbitrary-scale flow, else None
        (``lq * scale``)."""
        if self.hr_window is not None:
            return self.hr_window
        if self.flow.arbitrary_scale and hasattr(self, 'gt'):
            return int(self.gt.shape[-2]), int(self.gt.shape[-1])
        return None

    def _predict_cropped(
        self, methods: list[str], generator: torch.Generator, progress=None
    ) -> dict[str, list[Tensor]]:
        """:meth:`predict` of the current LR reflect-padded to the flow's ``lr_multiple``, cropped
        back to the HR asked for (see :func:`padded_out_size`)."""
        flow = self.flow
        lq = pad_to_multiple(self.lq, flow.lr_multiple)
        out_size = self._out_size()
        if out_size is None:
            out_h, out_w = self.lq.shape[-2] * flow.scale, self.lq.shape[-1] * flow.scale
            padded_size = None  # the flow's own lq * scale of the padded LR
        else:
            out_h, out_w = output_hw(out_size)
            padded_size = padded_out_size(out_size, self.lq, lq, flow)
        with torch.no_grad():
            results = self.predict(lq, methods, generator, out_size=padded_size, progress=progress)
        return {name: [sr[..., :out_h, :out_w] for sr in draws] for name, draws in results.items()}

    def test(self):
        """BasicSR's hook: ``self.output`` = the primary method's SR."""
        generator = self._validation_generator()
        primary = self.evaluation_methods()[0]
        self.output = self._predict_cropped([primary], generator)[primary][0]

    def _validation_generator(self) -> torch.Generator:
        seed = int((self.opt.get('val') or {}).get('seed', 0))
        return torch.Generator(device=self.device).manual_seed(seed)

    # ---------------------------------------------------------------- validation
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        logger = get_root_logger()
        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt['val']
        metrics_opt = val_opt.get('metrics') or {}
        methods = self.evaluation_methods()
        generator = self._validation_generator()
        skipped: dict[str, str] = {}
        rows: list[dict] = []

        for val_data in dataloader:
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            outputs = self._predict_cropped(methods, generator)
            lq_img = tensor2img(self.lq.detach().cpu())
            gt_img = tensor2img(self.gt.detach().cpu()) if hasattr(self, 'gt') else None
            # Without a GT (LR-only data such as SingleImageDataset) only the metrics that need none.
            wanted = {n: o for n, o in metrics_opt.items() if gt_img is not None or o['type'] in NO_GT_METRICS}
            for method, draws in outputs.items():
                finite = all(bool(torch.isfinite(sr).all()) for sr in draws)
                row = OrderedDict(image=img_name, method=method, finite=finite)
                scores: dict[str, list[float]] = {name: [] for name in wanted}
                for k, sr in enumerate(draws):
                    # A non-finite image is scored as the user would see it: NaN/inf pixels black/white.
                    shown = torch.nan_to_num(sr.detach().cpu(), nan=0.0, posinf=1.0, neginf=0.0)
                    sr_img = tensor2img(shown)
                    # The releases' protocols (calculate_release_protocol) score the float SR, not
                    # the rounded uint8 one: HWC RGB float32, unclamped; other metrics ignore it.
                    sr_float_rgb = shown[0].permute(1, 2, 0).float().numpy()
                    data = dict(img=sr_img, img2=gt_img, lq=lq_img, sr_float_rgb=sr_float_rgb)
                    for name, metric_opt in wanted.items():
                        scores[name].append(self._metric(name, metric_opt, data, skipped))
                    if save_img:
                        name = img_name if k == 0 else f'{img_name}_s{k}'
                        imwrite(sr_img, self._image_path(dataset_name, name, method, current_iter))
                row.update((name, float(np.mean(values))) for name, values in scores.items())
                if len(draws) > 1:
                    row['diversity'] = sample_diversity(draws)
                rows.append(row)
            if hasattr(self, 'gt'):
                del self.gt
            del self.lq

        columns = [name for name in metrics_opt if any(name in row for row in rows)]
        metrics_opt = {name: metrics_opt[name] for name in columns}
        if any('diversity' in row for row in rows):
            columns.append('diversity')
        summary = summarize(rows, methods, columns)
        self._record_metrics(summary, dataset_name, current_iter, metrics_opt, tb_logger)
        logger.info(format_summary(summary, dataset_name, current_iter, skipped))
        if not self.opt['is_train']:
            root = self.opt['path']['results_root']
            csv_path = write_test_tables(root, rows, summary, dataset_name, skipped)
            logger.info(f'Per-image metrics: {csv_path}; summary: summary_{dataset_name}.md')
            if not hasattr(self, '_run_table'):  # the first test set of this run
                self._run_table = RunTable(root, self.opt['name'])
            self._run_table.add(dataloader.dataset.opt, summary, skipped)
        self.validation_summary = summary

    def _metric(self, name: str, metric_opt: dict, data: dict, skipped: dict[str, str]) -> float:
        if name in skipped:
            return math.nan
        try:
            return float(calculate_metric(data, metric_opt))
        except MissingWeightsError as exc:  # e.g. LPIPS offline: report, do not crash
            skipped[name] = str(exc)
            get_root_logger().warning(f'metric {name} skipped: {exc}')
            return math.nan

    def _image_path(self, dataset_name: str, img_name: str, method: str, current_iter) -> str:
        vis = self.opt['path']['visualization']
        if self.opt['is_train']:
            return osp.join(vis, img_name, f'{img_name}_{method}_{current_iter}.png')
        return osp.join(vis, dataset_name, method, f'{img_name}.png')

    def _record_metrics(self, summary, dataset_name, current_iter, metrics_opt, tb_logger) -> None:
        """BasicSR's best-metric bookkeeping (primary method) and tensorboard scalars (all)."""
        primary = summary[0]
        if metrics_opt:
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {name: primary[name] for name in metrics_opt}
            for name, value in self.metric_results.items():
                if not math.isnan(value):
                    self._update_best_metric_result(dataset_name, name, value, current_iter)
        if tb_logger:
            for entry in summary:
                for key, value in entry.items():
                    if key not in ('method', 'images') and not (isinstance(value, float) and math.isnan(value)):
                        tb_logger.add_scalar(f'metrics/{dataset_name}/{entry["method"]}/{key}', value, current_iter)


def sample_diversity(draws: list[Tensor]) -> float:
    """HCFlow's diversity: the per-pixel standard deviation across samples, averaged over the
    image, in 8-bit levels (images clamped to [0, 1] first)."""
    stacked = torch.stack([d.detach().float().nan_to_num(0.0).clamp(0, 1) for d in draws])
    return float(stacked.std(dim=0, unbiased=False).mean() * 255.0)


def _nonfinite_ranks(loss: Tensor, opt: dict) -> list[int]:
    """The ranks whose ``loss`` is not finite: this one alone, or every rank's under distributed
    training (one all-reduce, so all ranks get the same list)."""
    finite = torch.isfinite(loss.detach())
    if not (opt.get('dist') and torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [] if bool(finite) else [int(opt.get('rank', 0))]
    flags = torch.zeros(torch.distributed.get_world_size(), device=loss.device)
    flags[torch.distributed.get_rank()] = (~finite).float()
    torch.distributed.all_reduce(flags)
    return flags.nonzero().flatten().tolist()


def _top_keys(path: str) -> str:
    try:
        loaded = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # noqa: BLE001  (only used to describe the file in an error message)
        return 'an unreadable file'
    if isinstance(loaded, dict):
        keys = list(loaded)[:5]
        return 'top-level keys ' + ', '.join(map(str, keys)) + (' ...' if len(loaded) > 5 else '')
    return type(loaded).__name__
