"""``AlignGPTForConditionalGeneration``: vision tower -> projector -> LLM, plus the alignment token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from aligngpt.config import AlignGPTConfig
from aligngpt.modeling.alignment import AlignmentModule
from aligngpt.modeling.projector import Projector
from aligngpt.modeling.vision import build_vision_tower, run_vision_tower, select_image_features

IGNORE_INDEX = -100
LOSS_POSITIONS = ("all", "supervised")


@dataclass
class AlignGPTOutput(ModelOutput):
    """Causal-LM output plus the gate's decision.

    ``logits`` is ``[B, L, V]`` (or ``[B, logits_to_keep, V]``); with ``loss_positions="supervised"`` it is
    ``[n_supervised, V]``, the logits that predict each supervised label in row-major order.
    ``alignment_weights`` is ``[B, N-1]``: the gate softmax for image rows, zeros for rows without an image; ``None``
    when no gate ran (decode steps, stage-1 levels, or a mode without a gate).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    alignment_weights: torch.Tensor | None = None


class AlignGPTPreTrainedModel(PreTrainedModel):
    config: AlignGPTConfig
    config_class = AlignGPTConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, AlignmentModule):
            module.reset_level_embeddings()
        elif isinstance(module, nn.Linear) and not isinstance(module, PreTrainedModel):
            module.reset_parameters()


class AlignGPTForConditionalGeneration(AlignGPTPreTrainedModel, GenerationMixin):
    """AlignGPT with any HF vision encoder and any HF causal LM.

    Inputs come from :class:`~aligngpt.processing.AlignGPTProcessor`: ``input_ids`` hold ``image_token_id`` at the
    ``num_image_tokens`` image positions of each image row and ``alignment_token_id`` at its alignment slot (right
    after BOS); both are filled here by a masked scatter, never looked up in the LLM's embedding table.
    """

    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def __init__(
        self,
        config: AlignGPTConfig,
        vision_tower: nn.Module | None = None,
        language_model: nn.Module | None = None,
    ):
        """Build from ``config``; pretrained ``vision_tower`` / ``language_model`` modules may be passed in."""
        super().__init__(config)
        self.vision_tower = vision_tower if vision_tower is not None else build_vision_tower(config)
        self.projector = Projector(config)
        self.alignment = AlignmentModule(config) if config.uses_alignment_token else None
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.language_model = language_model
        self.vision_tower.requires_grad_(False)
        self.post_init()

    # --- HF plumbing -------------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # --- pieces of the forward pass ------------------------------------------------------------------------------
    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen-tower features ``[n_images, num_image_tokens, d_vision]`` (cacheable: they never change)."""
        outputs = run_vision_tower(self.vision_tower, pixel_values)
        return select_image_features(outputs.hidden_states[self.config.vision_feature_layer], self.config)

    def project_vision_features(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Projected image tokens ``[n_images, num_image_tokens, d_text]`` from tower features (fresh or cached)."""
        projector_dtype = next(self.projector.parameters(), vision_features).dtype
        return self.projector(vision_features.to(projector_dtype))

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling | tuple:
        """Vision tower and projector on ``pixel_values`` ``[n_images, 3, H, W]``, as transformers' image-text models.

        ``kwargs`` go to the vision tower (``output_attentions``, ...); ``output_hidden_states`` (default: the config's)
        decides whether its hidden states are returned. ``return_dict=False`` (or ``config.return_dict=False``) gives
        the non-``None`` fields as a tuple.

        Returns:
            ``last_hidden_state`` ``[n_images, seq, d_vision]``: the tower's last layer; ``pooler_output``
            ``[n_images, num_image_tokens, d_text]``: the image tokens the LLM receives; ``hidden_states`` /
            ``attentions``: the tower's, when asked for.
        """
        want_hidden = kwargs.pop("output_hidden_states", None)
        if want_hidden is None:
            want_hidden = self.config.output_hidden_states
        outputs = run_vision_tower(self.vision_tower, pixel_values, **kwargs)
        selected = select_image_features(outputs.hidden_states[self.config.vision_feature_layer], self.config)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.project_vision_features(selected),
            hidden_states=outputs.hidden_states if want_hidden else None,
            attentions=getattr(outputs, "attentions", None),
        )

    def _special_masks(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``[B, L]`` masks of image positions and alignment slots."""
        image_mask = input_ids == self.config.image_token_id
        return image_mask, input_ids == self.config.alignment_token_id

    def _gate_text_mask(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_mask: torch.Tensor,
        align_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Text positions whose embeddings the gate averages: attended, not image, not alignment, not the row's BOS."""
        text = attention_mask.bool() & ~image_mask & ~align_mask
        bos_id = self.config.text_config.bos_token_id
        if bos_id is not None:
            first = attention_mask.long().argmax(dim=1, keepdim=True)
            is_first = torch.zeros_like(text).scatter_(1, first, True)
            text &= ~(is_first & (input_ids == bos_id))
        return text

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        alignment_levels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embed ``input_ids`` and scatter image features and alignment embeddings into place.

        Returns ``inputs_embeds`` ``[B, L, d]`` and ``alignment_weights`` ``[B, N-1]`` (or ``None``).
        """
        image_mask, align_mask = self._special_masks(input_ids)
        safe_ids = input_ids.masked_fill(image_mask | align_mask, 0)
        text_embeds = self.get_input_embeddings()(safe_ids)
        if pixel_values is None and vision_features is None:
            # Decode steps (one new token) cannot hold markers; skip the host sync of the check there.
            if input_ids.shape[1] > 1 and bool((image_mask | align_mask).any()):
                raise ValueError(
                    "input_ids contain image positions but neither pixel_values nor vision_features was given"
                )
            return text_embeds, None

        image_rows, align_rows = image_mask.any(dim=1), align_mask.any(dim=1)
        # One host sync for every count the checks need.
        stats = torch.stack([image_rows.sum(), image_mask.sum(), align_mask.sum(), (image_rows != align_rows).sum()])
        n_image_rows, n_positions, n_align, misplaced = stats.tolist()
        if n_image_rows == 0:
            if n_align:
                raise ValueError(f"input_ids hold {n_align} alignment slots but no image positions")
            return text_embeds, None
        if vision_features is None:
            vision_features = self.get_vision_features(pixel_values)
        features = self.project_vision_features(vision_features)
        if features.shape[0] * features.shape[1] != n_positions or features.shape[0] != n_image_rows:
            raise ValueError(
                f"{features.shape[0]} images x {features.shape[1]} tokens do not fill {n_positions} image positions in "
                f"{n_image_rows} rows (one image per sample, {self.config.num_image_tokens} positions each)"
            )
        embeds = _scatter_rows(text_embeds, image_mask, n_positions, features)
        if self.alignment is None or n_align == 0:
            return embeds, None
        if misplaced or n_align != n_image_rows:
            raise ValueError("every image row needs exactly one alignment slot, and text-only rows none")

        rows = torch.nonzero_static(image_rows, size=n_image_rows).squeeze(1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_mask = self._gate_text_mask(input_ids, attention_mask, image_mask, align_mask)
        counts = text_mask.sum(dim=1, keepdim=True).to(text_embeds.dtype)
        text_sum = (text_embeds * text_mask.unsqueeze(-1).to(text_embeds.dtype)).sum(dim=1)
        text_mean = (text_sum / (counts + 1e-8)).index_select(0, rows)
        levels = alignment_levels.index_select(0, rows) if alignment_levels is not None else None
        align_embeds, alpha = self.alignment(features.to(text_embeds.dtype), text_mean, levels)
        embeds = _scatter_rows(embeds, align_mask, n_align, align_embeds)
        weights = None
        if alpha is not None:
            weights = alpha.new_zeros(input_ids.shape[0], alpha.shape[-1]).index_copy(0, rows, alpha)
        return embeds, weights

    # --- forward -----------------------------------------------------------------------------------------------
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        alignment_levels: torch.LongTensor | None = None,
        vision_features: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        loss_positions: str = "all",
        **kwargs,
    ) -> AlignGPTOutput | tuple:
        """Multimodal causal-LM forward.

        Args:
            input_ids: ``[B, L]`` from the processor (image and alignment positions marked by their ids).
            pixel_values: ``[n_images, 3, H, W]``, one per image row in row order.
            attention_mask: ``[B, L]``; any padding side.
            position_ids: ``[B, L]``; by default ``cumsum(attention_mask) - 1`` so left and right padding agree.
            labels: ``[B, L]`` aligned with ``input_ids`` (shifted inside), ``-100`` = ignored.
            alignment_levels: ``[B]`` level ids; when given the alignment token is ``E[level]`` (stage 1).
            vision_features: ``[n_images, num_image_tokens, d_vision]`` cached tower outputs instead of pixels.
            logits_to_keep: if > 0, compute logits only for the last ``logits_to_keep`` positions.
            loss_positions: ``"all"`` returns full logits; ``"supervised"`` (training) applies the LM head only where
                a label is supervised, which saves the ``[B, L, V]`` logits tensor.
            return_dict: ``False`` (or ``config.return_dict=False``) returns the non-``None`` output fields as a tuple.
            inputs_embeds: ``[B, L, d]`` instead of ``input_ids``, text only: the image positions are marked in
                ``input_ids`` by ids that have no embedding, so they cannot be found in ``inputs_embeds``. For images,
                pass ``input_ids``, or build ``inputs_embeds`` with :meth:`embed_inputs`.
        """
        if loss_positions not in LOSS_POSITIONS:
            raise ValueError(f"loss_positions must be one of {LOSS_POSITIONS}, got {loss_positions!r}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            given = [
                name
                for name, value in (
                    ("pixel_values", pixel_values),
                    ("vision_features", vision_features),
                    ("alignment_levels", alignment_levels),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"{' and '.join(given)} cannot be used with inputs_embeds: the image and alignment positions are "
                    "marked in input_ids, not in embeddings. Pass input_ids instead, or build inputs_embeds with "
                    "model.embed_inputs(input_ids, attention_mask, pixel_values)"
                )
        alignment_weights = None
        if inputs_embeds is None:
            inputs_embeds, alignment_weights = self.embed_inputs(
                input_ids, attention_mask, pixel_values, vision_features, alignment_levels
            )
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -inputs_embeds.shape[1] :]

        outputs = self.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        lm_head = self.get_output_embeddings()
        num_items = kwargs.get("num_items_in_batch")
        loss = None
        if labels is not None and loss_positions == "supervised":
            targets = labels[:, 1:]
            supervised = targets != IGNORE_INDEX
            logits = lm_head(hidden[:, :-1][supervised])
            loss = _mean_cross_entropy(logits, targets[supervised], num_items)
        else:
            kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            logits = lm_head(kept)
            if labels is not None:
                # Shift the labels (not the logits): slicing [B, L, V] logits would copy them.
                targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
                loss = _mean_cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), num_items)
        return AlignGPTOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache if use_cache is not False else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            alignment_weights=alignment_weights,
        )


def _scatter_rows(embeds: torch.Tensor, mask: torch.Tensor, count: int, values: torch.Tensor) -> torch.Tensor:
    """``embeds`` with its ``count`` masked positions replaced by ``values`` in row-major order.

    Args:
        embeds: ``[B, L, d]``. mask: ``[B, L]`` bool with exactly ``count`` True entries (counted by the caller).
        values: ``[..., d]`` holding ``count`` vectors.

    Unlike ``masked_scatter``, neither this nor its backward (an ``index_select``) waits for the device to count the
    mask: the size is given.
    """
    batch, length, width = embeds.shape
    positions = torch.nonzero_static(mask.reshape(-1), size=count).squeeze(1)
    flat = embeds.reshape(batch * length, width).index_copy(0, positions, values.reshape(count, width).to(embeds.dtype))
    return flat.view(batch, length, width)


def _mean_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, num_items: int | torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy in float32 over non-ignored targets; divided by ``num_items`` (gradient accumulation) if given.

    Args:
        logits: ``[n, V]``. targets: ``[n]`` with ``-100`` ignored.
    """
    if num_items is None:
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    total = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    if isinstance(num_items, torch.Tensor):
        num_items = num_items.to(total.device)
    return total / num_items
