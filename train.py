"""Train the RMSprop regressor: ``python train.py [optimizer=rmsprop_centered] [key=value ...]``."""

from rmsprop_lightning.app.cli import train_main

if __name__ == "__main__":
    train_main()
