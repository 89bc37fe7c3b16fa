"""Using a trained model: batch scoring of a split with the sharded model (:mod:`.predict`) and an
export of the dense part for serving (:mod:`.export`). Above :mod:`store_rec.train` in the layers:
it builds, shards and loads models the way training does."""
