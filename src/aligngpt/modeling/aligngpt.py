"""AlignGPT as transformers structures its image-text models (llava's split):

* :class:`AlignGPTModel` (``AutoModel``): vision tower -> projector -> the LLM's decoder, plus the alignment module;
  returns hidden states.
* :class:`AlignGPTForConditionalGeneration` (``AutoModelForImageTextToText``): ``model`` plus the LM head; logits,
  loss and ``generate``.

Checkpoints keep the flat layout aligngpt always wrote (``vision_tower.*``, ``projector.*``, ``alignment.*``,
``language_model.model.*``, ``language_model.lm_head.*``): a registered key renaming maps it to these modules when
loading and back when saving.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.conversion_mapping import WeightRenaming, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from aligngpt.config import LEGACY_ALIGNMENT_TOKEN_ID, LEGACY_IMAGE_TOKEN_ID, MODEL_TYPE, AlignGPTConfig
from aligngpt.modeling.alignment import AlignmentModule
from aligngpt.modeling.projector import Projector
from aligngpt.modeling.vision import build_vision_tower, run_vision_tower, select_image_features
from aligngpt.modeling.vocabulary import grow_vocabulary

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
LOSS_POSITIONS = ("all", "supervised")
# Inputs that belong to the pass that starts from an empty cache (the prompt), never to later decoding steps.
MULTIMODAL_INPUTS = ("pixel_values", "vision_features", "alignment_levels")
# transformers renamed ``past_key_values`` to ``cache``; the old name works, with a warning, until this version.
PAST_KEY_VALUES_REMOVAL = "5.40.0"

# Saved name -> module name, applied in order; transformers reverses them when saving.
CHECKPOINT_RENAMES = (
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^projector\.", "model.projector."),
    (r"^alignment\.", "model.alignment."),
)


@dataclass
class AlignGPTModelOutput(ModelOutput):
    """Decoder output plus the gate's decision.

    ``last_hidden_state`` is ``[B, L, d]``; ``alignment_weights`` ``[B, N-1]``: the gate softmax for image rows, zeros
    for rows without an image; ``None`` when no gate ran (decode steps, stage-1 levels, or a mode without a gate).
    ``image_outputs``: the image encoder's output for the pass that encoded images (:meth:`AlignGPTModel.
    get_image_features`; ``pooler_output`` ``[n_images, num_image_tokens, d]`` are the projected image tokens).
    """

    last_hidden_state: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    alignment_weights: torch.Tensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


@dataclass
class AlignGPTOutput(ModelOutput):
    """Causal-LM output plus the gate's decision.

    ``logits`` is ``[B, L, V]`` (or ``[B, logits_to_keep, V]``); with ``loss_positions="supervised"`` it is
    ``[n_supervised, V]``, the logits that predict each supervised label in row-major order. The marker ids' logits
    hold the dtype's minimum. ``alignment_weights`` and ``image_outputs`` as in :class:`AlignGPTModelOutput`.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    alignment_weights: torch.Tensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


class AlignGPTPreTrainedModel(PreTrainedModel):
    config: AlignGPTConfig
    config_class = AlignGPTConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # decoding steps (one token, no image inputs) have no data-dependent branches
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, AlignmentModule):
            module.reset_level_embeddings()
        elif module is getattr(self, "lm_head", None):
            nn.init.normal_(module.weight, std=getattr(self.config.text_config, "initializer_range", 0.02))
        elif isinstance(module, nn.Linear) and not isinstance(module, PreTrainedModel):
            module.reset_parameters()


class AlignGPTModel(AlignGPTPreTrainedModel):
    """Vision tower, projector, alignment module and the LLM's decoder: the hidden states of AlignGPT.

    Inputs come from :class:`~aligngpt.processing.AlignGPTProcessor`: ``input_ids`` hold ``image_token_id`` at the
    ``num_image_tokens`` image positions of each image row and ``alignment_token_id`` at its alignment slot (right
    after BOS); both are filled here by a scatter, whatever their embedding rows hold.
    """

    def __init__(
        self,
        config: AlignGPTConfig,
        vision_tower: nn.Module | None = None,
        language_model: nn.Module | None = None,
    ):
        """Build from ``config``; a pretrained ``vision_tower`` / decoder ``language_model`` may be passed in."""
        super().__init__(config)
        self.vision_tower = vision_tower if vision_tower is not None else build_vision_tower(config)
        self.projector = Projector(config)
        self.alignment = AlignmentModule(config) if config.uses_alignment_token else None
        self.language_model = (
            language_model if language_model is not None else AutoModel.from_config(config.text_config)
        )
        self.vision_tower.requires_grad_(False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

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

    def _token_mask(self, token_id: int | None, input_ids, inputs_embeds, legacy_id: int | None = None) -> torch.Tensor:
        """``[B, L]`` positions holding ``token_id`` (or ``legacy_id``), found in ``input_ids`` or, without them, by
        their embedding row in ``inputs_embeds``."""
        if input_ids is not None:
            mask = input_ids == token_id if token_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)
            if legacy_id is not None and legacy_id != token_id:
                mask |= input_ids == legacy_id
            return mask
        if token_id is None or token_id < 0:
            return inputs_embeds.new_zeros(inputs_embeds.shape[:2], dtype=torch.bool)
        row = self.get_input_embeddings().weight[token_id].to(inputs_embeds.dtype)
        return (inputs_embeds == row).all(dim=-1)

    def marker_masks(
        self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``[B, L]`` masks of image positions and alignment slots, from ``input_ids`` (which may also use the
        official sentinels -200 / -201) or from ``inputs_embeds`` (positions equal to the markers' embedding rows)."""
        config = self.config
        image = self._token_mask(config.image_token_id, input_ids, inputs_embeds, LEGACY_IMAGE_TOKEN_ID)
        align = self._token_mask(config.alignment_token_id, input_ids, inputs_embeds, LEGACY_ALIGNMENT_TOKEN_ID)
        return image, align

    def _gate_text_mask(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        image_mask: torch.Tensor,
        align_mask: torch.Tensor,
        answer_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text positions whose embeddings the gate averages: attended, not image, not alignment, not the row's BOS,
        and not in ``answer_mask`` ``[B, L]`` (given in training when ``config.gate_text == "prompt"``)."""
        text = attention_mask.bool() & ~image_mask & ~align_mask
        if answer_mask is not None:
            text &= ~answer_mask
        bos_id = self.config.text_config.bos_token_id
        if bos_id is not None:
            first = attention_mask.long().argmax(dim=1, keepdim=True)
            is_first = torch.zeros_like(text).scatter_(1, first, True)
            text &= ~(is_first & self._token_mask(bos_id, input_ids, inputs_embeds))
        return text

    def embed_inputs(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
        alignment_levels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        prefill: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embed ``input_ids`` (or take ``inputs_embeds``) and scatter image features and alignment embeddings into
        the marker positions.

        ``prefill=False`` (a step that extends a cache: decoding, or draft tokens being verified) embeds marker ids as
        ordinary tokens when no image input comes with them; a prompt with markers but no image input raises.

        Returns ``inputs_embeds`` ``[B, L, d]`` and ``alignment_weights`` ``[B, N-1]`` (or ``None``).
        """
        embeds, weights, _ = self._embed(
            input_ids, attention_mask, pixel_values, vision_features, alignment_levels, inputs_embeds, prefill
        )
        return embeds, weights

    def _embed(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        vision_features: torch.Tensor | None,
        alignment_levels: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        prefill: bool,
        answer_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, BaseModelOutputWithPooling | None]:
        """:meth:`embed_inputs` plus the image encoder's outputs (``pooler_output``: the projected image tokens).

        ``answer_mask`` ``[B, L]``: positions the gate's text mean leaves out (see :meth:`_gate_text_mask`)."""
        image_mask, align_mask = self.marker_masks(input_ids, inputs_embeds)
        if inputs_embeds is None:
            legacy = (input_ids < 0) & (image_mask | align_mask)
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(legacy, 0))
        text_embeds = inputs_embeds
        if pixel_values is None and vision_features is None:
            # Decoding steps (one new token) cannot hold markers; skip the host sync of the check there.
            if prefill and text_embeds.shape[1] > 1 and bool((image_mask | align_mask).any()):
                logger.warning_once(
                    "input_ids contain image positions but neither pixel_values nor vision_features was given: "
                    "the markers are embedded as ordinary tokens"
                )
            return text_embeds, None, None

        image_rows, align_rows = image_mask.any(dim=1), align_mask.any(dim=1)
        # One host sync for every count the checks need.
        stats = torch.stack([image_rows.sum(), image_mask.sum(), align_mask.sum(), (image_rows != align_rows).sum()])
        n_image_rows, n_positions, n_align, misplaced = stats.tolist()
        if n_image_rows == 0:
            if n_align:
                raise ValueError(f"input_ids hold {n_align} alignment slots but no image positions")
            return text_embeds, None, None
        if vision_features is None:
            image_outputs = self.get_image_features(pixel_values, return_dict=True)
        else:
            image_outputs = BaseModelOutputWithPooling(pooler_output=self.project_vision_features(vision_features))
        features = image_outputs.pooler_output
        if features.shape[0] * features.shape[1] != n_positions or features.shape[0] != n_image_rows:
            raise ValueError(
                f"{features.shape[0]} images x {features.shape[1]} tokens do not fill {n_positions} image positions in "
                f"{n_image_rows} rows (one image per sample, {self.config.num_image_tokens} positions each)"
            )
        embeds = _scatter_rows(text_embeds, image_mask, n_positions, features)
        if self.alignment is None or n_align == 0:
            return embeds, None, image_outputs
        if misplaced or n_align != n_image_rows:
            raise ValueError("every image row needs exactly one alignment slot, and text-only rows none")

        rows = torch.nonzero_static(image_rows, size=n_image_rows).squeeze(1)
        if attention_mask is None:
            attention_mask = torch.ones(text_embeds.shape[:2], dtype=torch.long, device=text_embeds.device)
        text_mask = self._gate_text_mask(input_ids, inputs_embeds, attention_mask, image_mask, align_mask, answer_mask)
        counts = text_mask.sum(dim=1, keepdim=True).to(text_embeds.dtype)
        text_sum = (text_embeds * text_mask.unsqueeze(-1).to(text_embeds.dtype)).sum(dim=1)
        text_mean = (text_sum / (counts + 1e-8)).index_select(0, rows)
        levels = alignment_levels.index_select(0, rows) if alignment_levels is not None else None
        align_embeds, alpha = self.alignment(features.to(text_embeds.dtype), text_mean, levels)
        embeds = _scatter_rows(embeds, align_mask, n_align, align_embeds)
        weights = None
        if alpha is not None:
            weights = alpha.new_zeros(text_embeds.shape[0], alpha.shape[-1]).index_copy(0, rows, alpha)
        return embeds, weights, image_outputs

    # --- forward -----------------------------------------------------------------------------------------------
    @can_return_tuple
    @deprecate_kwarg("past_key_values", PAST_KEY_VALUES_REMOVAL, new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        alignment_levels: torch.LongTensor | None = None,
        vision_features: torch.Tensor | None = None,
        use_cache: bool | None = None,
        answer_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AlignGPTModelOutput | tuple:
        """Multimodal decoder forward.

        Args:
            input_ids: ``[B, L]`` from the processor (image and alignment positions marked by their ids).
            pixel_values: ``[n_images, 3, H, W]``, one per image row in row order.
            attention_mask: ``[B, L]``; any padding side.
            position_ids: ``[B, L]``; by default ``cumsum(attention_mask) - 1`` so left and right padding agree.
            inputs_embeds: ``[B, L, d]`` instead of ``input_ids``, e.g. ``get_input_embeddings()(input_ids)``; image
                and alignment positions are found by their embedding rows (not possible for legacy negative ids).
            alignment_levels: ``[B]`` level ids; when given the alignment token is ``E[level]`` (stage 1).
            vision_features: ``[n_images, num_image_tokens, d_vision]`` cached tower outputs instead of pixels.
            answer_mask: ``[B, L]`` bool, positions the gate's mean text embedding leaves out (the answer tokens, in
                training with ``config.gate_text == "prompt"``).
            return_dict: ``False`` (or ``config.return_dict=False``) returns the non-``None`` output fields as a tuple.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None and min(self.config.image_token_id, self.config.alignment_token_id) < 0:
            multimodal = {
                "pixel_values": pixel_values,
                "vision_features": vision_features,
                "alignment_levels": alignment_levels,
            }
            given = [name for name, value in multimodal.items() if value is not None]
            if given:
                raise ValueError(
                    f"{' and '.join(given)} cannot be used with inputs_embeds for a model with negative (legacy) "
                    "marker ids: their positions have no embedding row. Pass input_ids instead, or build "
                    "inputs_embeds with model.embed_inputs(input_ids, attention_mask, pixel_values)"
                )
        # Only a multi-token pass without image inputs needs to know whether it extends a cache; a decoding step
        # (one token) never asks, which keeps it free of data-dependent branches (torch.compile with a static cache).
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        unimaged = pixel_values is None and vision_features is None
        prefill = cache is None or cache.get_seq_length() == 0 if unimaged and length > 1 else True
        inputs_embeds, alignment_weights, image_outputs = self._embed(
            input_ids,
            attention_mask,
            pixel_values,
            vision_features,
            alignment_levels,
            inputs_embeds,
            prefill,
            answer_mask,
        )
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -inputs_embeds.shape[1] :]
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return AlignGPTModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache if use_cache is not False else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            alignment_weights=alignment_weights,
            image_outputs=image_outputs,
        )


class AlignGPTForConditionalGeneration(AlignGPTPreTrainedModel, GenerationMixin):
    """AlignGPT with any HF vision encoder and any HF causal LM: :class:`AlignGPTModel` plus the LM head."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(
        self,
        config: AlignGPTConfig,
        vision_tower: nn.Module | None = None,
        language_model: nn.Module | None = None,
    ):
        """Build from ``config``; a pretrained ``vision_tower`` and causal LM ``language_model`` (with its LM head)
        may be passed in. A causal LM whose vocabulary lacks the marker ids is resized to ``config``'s."""
        super().__init__(config)
        decoder = lm_head = None
        if language_model is not None:
            grow_vocabulary(language_model, config.text_config.vocab_size)
            decoder, lm_head = language_model.get_decoder(), language_model.get_output_embeddings()
        self.model = AlignGPTModel(config, vision_tower=vision_tower, language_model=decoder)
        self.lm_head = (
            lm_head
            if lm_head is not None
            else nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        )
        self.post_init()
        if config.marker_token_ids:
            suppressed = set(self.generation_config.suppress_tokens or ()) | set(config.marker_token_ids)
            self.generation_config.suppress_tokens = sorted(suppressed)

    # --- HF plumbing -------------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_decoder(self) -> nn.Module:
        return self.model.language_model

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def projector(self) -> Projector:
        return self.model.projector

    @property
    def alignment(self) -> AlignmentModule | None:
        return self.model.alignment

    @property
    def language_model(self) -> nn.Module:
        """The LLM's decoder (replace it with ``model.model.language_model = ...``)."""
        return self.model.language_model

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """See :meth:`AlignGPTModel.get_vision_features`."""
        return self.model.get_vision_features(pixel_values)

    def project_vision_features(self, vision_features: torch.Tensor) -> torch.Tensor:
        """See :meth:`AlignGPTModel.project_vision_features`."""
        return self.model.project_vision_features(vision_features)

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling | tuple:
        """See :meth:`AlignGPTModel.get_image_features`."""
        return self.model.get_image_features(pixel_values, **kwargs)

    def embed_inputs(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """See :meth:`AlignGPTModel.embed_inputs`."""
        return self.model.embed_inputs(*args, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """transformers' preparation, with the image inputs given exactly to a pass that starts from an empty cache.

        That pass holds the prompt's markers, also when transformers would drop the pixels (an assistant model's
        first pass in assisted decoding); a pass that extends a cache gets none (its marker ids, e.g. drafts copied
        from the prompt by prompt lookup, are embedded as tokens and are never accepted: their logits are masked).
        """
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        prefill = cache is None or cache.get_seq_length() == 0
        for name in MULTIMODAL_INPUTS:
            if prefill and kwargs.get(name) is not None:
                model_inputs[name] = kwargs[name]
            else:
                model_inputs.pop(name, None)
        return model_inputs

    def create_masks_for_generate(self, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
        """Keep the ``[B, L]`` padding mask under a static cache (transformers would pass a 4-D causal mask): the gate
        and the position ids read it, and the decoder builds its causal mask from it."""
        return attention_mask

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that also takes the saved (flat) layout, e.g. a ``model.safetensors`` read
        directly, as transformers' ``Trainer`` does when it resumes from a checkpoint."""
        return super().load_state_dict(module_names(state_dict), strict=strict, assign=assign)

    def _mask_marker_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Put the dtype's minimum at the marker ids (in place): they are never predicted, and the loss over the
        original vocabulary equals that of a model without them."""
        markers = [marker for marker in self.config.marker_token_ids if marker < logits.shape[-1]]
        if markers:
            logits[..., markers] = torch.finfo(logits.dtype).min
        return logits

    # --- forward -----------------------------------------------------------------------------------------------
    @can_return_tuple
    @deprecate_kwarg("past_key_values", PAST_KEY_VALUES_REMOVAL, new_name="cache")
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

        Args (the others as :meth:`AlignGPTModel.forward`):
            labels: ``[B, L]`` aligned with ``input_ids`` (shifted inside), ``-100`` = ignored.
            shift_labels: ``[B, L]`` targets already shifted (position ``i`` is predicted from position ``i``), as
                transformers passes them under sequence parallelism; they take precedence over ``labels``.
            logits_to_keep: if > 0, compute logits only for the last ``logits_to_keep`` positions.
            loss_positions: ``"all"`` returns full logits; ``"supervised"`` (training) applies the LM head only where
                a label is supervised, which saves the ``[B, L, V]`` logits tensor.
            return_dict: ``False`` (or ``config.return_dict=False``) returns the non-``None`` output fields as a tuple.
        """
        if loss_positions not in LOSS_POSITIONS:
            raise ValueError(f"loss_positions must be one of {LOSS_POSITIONS}, got {loss_positions!r}")
        shift_labels = kwargs.pop("shift_labels", None)
        answer_mask = None
        if self.config.gate_text == "prompt" and labels is not None:
            answer_mask = labels != IGNORE_INDEX
        elif self.config.gate_text == "prompt" and shift_labels is not None:
            answer_mask = F.pad(shift_labels[:, :-1] != IGNORE_INDEX, (1, 0), value=False)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            alignment_levels=alignment_levels,
            vision_features=vision_features,
            use_cache=use_cache,
            answer_mask=answer_mask,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        num_items = kwargs.get("num_items_in_batch")
        # Targets per position: ``shift_labels`` come pre-shifted (sequence parallelism); ``labels`` are shifted here
        # (the labels, not the logits: slicing [B, L, V] logits would copy them).
        targets = shift_labels
        if targets is None and labels is not None:
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        loss = None
        if targets is not None and loss_positions == "supervised":
            supervised = targets != IGNORE_INDEX
            logits = self._mask_marker_logits(self.lm_head(hidden[supervised]))
            loss = _mean_cross_entropy(logits, targets[supervised], num_items)
        else:
            kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            logits = self._mask_marker_logits(self.lm_head(kept))
            if targets is not None:
                loss = _mean_cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), num_items)
        return AlignGPTOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            alignment_weights=outputs.alignment_weights,
            image_outputs=outputs.image_outputs,
        )


_CHECKPOINT_PATTERNS = tuple((re.compile(source), target) for source, target in CHECKPOINT_RENAMES)


def module_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with saved names (``language_model.model.*``, ``projector.*``...) renamed to the module names
    of :class:`AlignGPTForConditionalGeneration`; module names pass unchanged."""
    renamed = {}
    for name, tensor in state_dict.items():
        for pattern, target in _CHECKPOINT_PATTERNS:
            new_name, count = pattern.subn(target, name, count=1)
            if count:
                name = new_name
                break
        renamed[name] = tensor
    return renamed


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


register_checkpoint_conversion_mapping(
    MODEL_TYPE,
    [WeightRenaming(source_patterns=source, target_patterns=target) for source, target in CHECKPOINT_RENAMES],
    overwrite=True,
)
