"""The interface every classifier in the registry shares, so trainer, ART bridge and detector treat them alike."""

from typing import ClassVar

import keras
from keras import ops

from capsrobust.layers import ReconstructionDecoder, mask_poses
from capsrobust.losses import reconstruction_loss, scale_for_replicas

SCORES, POSES, RECONSTRUCTION = "scores", "poses", "reconstruction"


def split_inputs(inputs):
    """`(images, labels)` from either an image tensor or a dict `{"image": ..., "label": one_hot}`."""
    if isinstance(inputs, dict):
        return inputs["image"], inputs.get("label")
    return inputs, None


class CapsrobustModel(keras.Model):
    """A classifier that returns a dict of named outputs.

    Call it on images `(batch_size, height, width, channels)` in [0, 1], or during training on
    `{"image": images, "label": one_hot_labels}` so that the decoder is masked by the true label (Sabour et al. 2017);
    without labels the decoder is masked by the predicted class. Outputs:

    - `"scores"`: `(batch_size, num_classes)`; capsule lengths in [0, 1) when `score_kind == "lengths"`, capsule
      activations in (0, 1) when `"activations"` (EM routing), unnormalised logits when `"logits"`. The predicted class
      is always the arg-max.
    - `"poses"`: `(batch_size, num_classes, pose_dim)`, the class capsules (or, for a CNN with a decoder, the
      class-grouped features the decoder reads); absent for plain CNNs.
    - `"reconstruction"`: `(batch_size, height, width, channels)`, present when the model has a decoder.

    Subclasses set `score_kind`, build their layers, and implement `classify` and `classification_loss`.

    Args:
        image_shape: `(height, width, channels)`.
        num_classes: number of classes.
        decoder_units: hidden widths of the reconstruction decoder (`ReconstructionDecoder`), or None for no decoder.
        recon_weight: weight of the summed squared reconstruction error in the training loss.
    """

    score_kind: ClassVar[str]
    supports_votes: ClassVar[bool] = False  # capsule models: `votes` and `vote_scores` (the vote attack's target)

    def __init__(self, image_shape, num_classes: int, decoder_units=None, recon_weight: float = 0.0005, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.num_classes = int(num_classes)
        self.decoder = None if decoder_units is None else ReconstructionDecoder(self.image_shape, decoder_units,
                                                                                name="decoder")
        self.recon_weight = float(recon_weight)
        self.accuracy_metric = keras.metrics.CategoricalAccuracy(name="accuracy")
        # Set by the trainer for adversarial training (`capsrobust.training.adversarial.AdversarialObjective`):
        # `(model, inputs, labels, outputs) -> scalar` replaces the mean training loss while training.
        self.training_objective = None

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    @property
    def registry_name(self) -> str:
        """The registry name the model was created under (`cnn-recon`, not its builder's `cnn`)."""
        return getattr(self, "_registry_name", self.name)

    @property
    def provides(self) -> frozenset[str]:
        """What attacks may require of the model (`attacks.base.REQUIREMENTS`): `"votes"`, `"decoder"`."""
        return frozenset({"votes"} if self.supports_votes else set()) | frozenset(
            {"decoder"} if self.has_decoder else set())

    def classify(self, images, training=None):
        """Returns `(scores, poses)`; `poses` is None for models without class poses."""
        raise NotImplementedError

    def classification_loss(self, labels, scores):
        """Per-example classification loss `(batch_size,)` from one-hot labels and scores."""
        raise NotImplementedError

    def vote_scores(self, images):
        """Class scores `(batch_size, num_classes)` from the class capsules' votes with routing skipped (Gu et al.
        2021); only models with `supports_votes`. Scored like `"scores"`, so the model's attack losses apply."""
        raise NotImplementedError(f"{self.registry_name} has no capsule votes")

    def call(self, inputs, training=None):
        images, labels = split_inputs(inputs)
        scores, poses = self.classify(images, training=training)
        outputs = {SCORES: scores}
        if poses is not None:
            outputs[POSES] = poses
        if self.decoder is not None:
            mask = labels if labels is not None else ops.one_hot(ops.argmax(scores, axis=-1), self.num_classes)
            outputs[RECONSTRUCTION] = self.decoder(mask_poses(poses, mask))
        return outputs

    def loss_per_example(self, images, labels, outputs):
        """The training loss of each example, `(batch_size,)`: classification plus weighted reconstruction error."""
        loss = self.classification_loss(labels, outputs[SCORES])
        if RECONSTRUCTION in outputs and self.recon_weight:
            loss = loss + self.recon_weight * reconstruction_loss(images, outputs[RECONSTRUCTION])
        return loss

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if training and self.training_objective is not None and isinstance(x, dict) and "eps" in x:
            return scale_for_replicas(self.training_objective(self, x, y, y_pred))
        images, _ = split_inputs(x)
        return scale_for_replicas(ops.mean(self.loss_per_example(images, y, y_pred)))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.accuracy_metric.update_state(y, y_pred[SCORES])
        return self.get_metrics_result()
