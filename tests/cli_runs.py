"""The short `na-kernels train` run on the bundled 8x8 digits that the CLI tests convert."""

DIGITS_TRAIN = (
    "--dataset digits --arch digits_cnn --p 3 --lam 2 --lr 0.05 --batch-size 64 --no-progress --device cpu".split()
)


def train_digits(out, epochs=1, *extra) -> int:
    """``na-kernels train`` on the digits for ``epochs`` epochs into folder ``out``; its exit code."""
    from na_kernels.app.cli import main

    return main(["train", *DIGITS_TRAIN, "--epochs", str(epochs), "--out", str(out), *extra])
