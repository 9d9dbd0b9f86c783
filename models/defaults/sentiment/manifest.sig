{
  "algorithm": "ed25519",
  "key_id": "76e01a902c92146e",
  "signature": "S6+Iu8TM3lbeZqntk5JeAYw2RJILrzXm8s7+3/zMoK/DoTYSfgrICMxXixLWC8NS7he2ojJPy6jHZFmUlxyCAg=="
}
