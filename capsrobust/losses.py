"""Training losses. Each returns one value per example, shape `(batch_size,)`; callers take the mean
(`scale_for_replicas` then divides it among data-parallel replicas)."""

import keras
from keras import ops


def margin_loss(labels, lengths, m_plus: float = 0.9, m_minus: float = 0.1, down_weight: float = 0.5):
    """Margin loss of Sabour et al. (2017), eq. 4, summed over classes.

    `L_k = T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2`

    Args:
        labels: one-hot targets `T`, shape `(batch_size, num_classes)`.
        lengths: capsule lengths `|v_k|`, shape `(batch_size, num_classes)`.
        m_plus: the present class's length should exceed this (0.9).
        m_minus: absent classes' lengths should stay below this (0.1).
        down_weight: `lambda`, weight of the absent-class term (0.5).

    Returns:
        `(batch_size,)` losses.
    """
    labels = ops.cast(labels, lengths.dtype)
    present = labels * ops.square(ops.relu(m_plus - lengths))
    absent = down_weight * (1.0 - labels) * ops.square(ops.relu(lengths - m_minus))
    return ops.sum(present + absent, axis=-1)


def reconstruction_loss(images, reconstructions):
    """Sum of squared pixel differences per image (Sabour et al. 2017 scale it by 0.0005 in the total loss).

    Args:
        images: `(batch_size, height, width, channels)` in [0, 1].
        reconstructions: same shape.

    Returns:
        `(batch_size,)` sums of squared errors.
    """
    squared_error = ops.square(ops.cast(images, reconstructions.dtype) - reconstructions)
    return ops.sum(ops.reshape(squared_error, (ops.shape(squared_error)[0], -1)), axis=-1)


def softmax_cross_entropy(labels, logits):
    """Cross-entropy of softmax(logits) against one-hot labels.

    Args:
        labels: `(batch_size, num_classes)` one-hot.
        logits: `(batch_size, num_classes)` unnormalised scores.

    Returns:
        `(batch_size,)` losses.
    """
    return ops.categorical_crossentropy(ops.cast(labels, logits.dtype), logits, from_logits=True)


def difference_of_logits_ratio(labels, logits):
    """Croce & Hein's (2020) DLR loss: `-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`, what APGD-DLR climbs.

    `z_pi1 >= z_pi2 >= z_pi3` are the three largest scores. The ratio is unchanged when the scores are shifted or
    scaled, so it suits capsule lengths in [0, 1) as well as logits. The 1e-12 keeps a three-way tie finite (as the
    reference implementation does).

    Args:
        labels: `(batch_size, num_classes)` one-hot; `num_classes >= 3`.
        logits: `(batch_size, num_classes)` scores.

    Returns:
        `(batch_size,)` losses, positive once an image is misclassified.
    """
    labels = ops.cast(labels, logits.dtype)
    true_score = ops.sum(labels * logits, axis=-1)
    # The true class's score replaced by one below every score, so the maximum is over the other classes.
    below_all = ops.min(logits, axis=-1, keepdims=True) - 1.0
    best_other = ops.max(ops.where(labels > 0.5, below_all, logits), axis=-1)
    top, _ = ops.top_k(logits, k=3)
    return -(true_score - best_other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_difference_of_logits_ratio(labels, targets, logits):
    """Croce & Hein's (2020) targeted DLR loss, what APGD-T climbs: `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`.

    Args:
        labels: `(batch_size, num_classes)` one-hot true classes.
        targets: `(batch_size, num_classes)` one-hot target classes.
        logits: `(batch_size, num_classes)` scores; `num_classes >= 4`.

    Returns:
        `(batch_size,)` losses, positive once the target's score exceeds the true class's.
    """
    labels, targets = ops.cast(labels, logits.dtype), ops.cast(targets, logits.dtype)
    gap = ops.sum(labels * logits, axis=-1) - ops.sum(targets * logits, axis=-1)
    top, _ = ops.top_k(logits, k=4)
    return -gap / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def spread_loss(labels, activations, margin):
    """Spread loss of Hinton, Sabour & Frosst (2018), eq. 3: `sum_{i != t} max(0, m - (a_t - a_i))^2`.

    Args:
        labels: one-hot targets, `(batch_size, num_classes)`.
        activations: class capsule activations `a`, `(batch_size, num_classes)`.
        margin: `m`, a scalar (the paper grows it from 0.2 to 0.9 during training).

    Returns:
        `(batch_size,)` losses.
    """
    labels = ops.cast(labels, activations.dtype)
    target = ops.sum(labels * activations, axis=-1, keepdims=True)
    return ops.sum((1.0 - labels) * ops.square(ops.relu(margin - (target - activations))), axis=-1)


def scale_for_replicas(loss):
    """`loss` divided by the number of replicas in sync under `tf.distribute` (else unchanged).

    Keras sums the replicas' gradients; a per-replica mean loss must be divided by their number for the sum to be
    the gradient of the global batch's mean, as Keras's own `Loss` objects do.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            return loss / replicas
    return loss
