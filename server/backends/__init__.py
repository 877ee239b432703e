"""What serves a request, behind one face (`base`): `local` (a job on the model's Redis queue, decoded
by a worker) and `hosted` (litellm, in the gateway process)."""
