"""Train a sample network and save it as a torch.export archive for ``rramc compile``.

    python -m rramc.samples.train --model paper_mlp --dataset fashion-mnist --epochs 5 -o mlp.pt2
    python -m rramc.samples.train --model paper_cifar_mlp --dataset cifar10 --data-dir D --crop 28 -o cifar.pt2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rramc.datasets import DATASETS, load_dataset
from rramc.errors import RramcError
from rramc.frontend import save_exported
from rramc.runtime.evaluate import fit_inputs
from rramc.samples import models, sequence_models
from rramc.training import TrainConfig, accuracy, train_classifier

ARCHITECTURES = {
    "digits_mlp": models.digits_mlp,
    "digits_cnn": models.digits_cnn,
    "paper_mlp": models.paper_mlp,
    "paper_deep_mlp": models.paper_deep_mlp,
    "paper_cifar_mlp": models.paper_cifar_mlp,
    "mnist_cnn": models.mnist_cnn,
    "digits_transformer": sequence_models.digits_transformer,
    "digits_lstm": sequence_models.digits_lstm,
    "fashion_transformer": sequence_models.fashion_transformer,
    "fashion_lstm": sequence_models.fashion_lstm,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), default="digits_mlp")
    parser.add_argument("--dataset", choices=DATASETS, default="digits")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--download", action="store_true", help="download the data set if missing (needs the network)")
    parser.add_argument("--crop", type=int, help="centre-crop images to this size (CIFAR-10 to 28 for the paper's MLP)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = ARCHITECTURES[args.model]()
    try:
        train = load_dataset(args.dataset, "train", args.data_dir, download=args.download)
        test = load_dataset(args.dataset, "test", args.data_dir, download=args.download)
        if args.crop:
            train, test = train.center_crop(args.crop), test.center_crop(args.crop)
        with torch.no_grad():  # fail early, with rramc's message, if the images do not fit the network
            first = next(m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
            if hasattr(model, "image_shape"):  # a network that reads images its own way (rows as a sequence)
                fit_inputs(test.images[:1], model.image_shape, args.dataset)
            elif isinstance(first, torch.nn.Linear):
                fit_inputs(test.images[:1], (first.in_features,), args.dataset)
    except RramcError as exc:
        parser.exit(1, f"error: {exc}\n")
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, schedule=args.schedule)
    train_classifier(model, train, config, on_epoch=lambda e, loss, acc: print(f"epoch {e + 1:3d}  loss {loss:.4f}  train {100 * acc:.2f} %"))
    test_accuracy = accuracy(model, test)
    print(f"test accuracy {100 * test_accuracy:.2f} %")
    save_exported(model, test.images[:1], args.output, dataset=args.dataset, architecture=args.model, crop=args.crop,
                  float_test_accuracy=round(test_accuracy, 4), train_config=vars(config))
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
