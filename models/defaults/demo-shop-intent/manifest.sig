{
  "algorithm": "ed25519",
  "key_id": "76e01a902c92146e",
  "signature": "n8D18mEpVtMnlPOPD8sYB/SxHjkyeyqZPgku/RItWVNN5DjbdX7eaPUfamYkYYB8TMjkpZutH+vc1Wzo6QgCBw=="
}
