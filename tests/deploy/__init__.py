"""Static checks of deploy/ (images, compose, Kubernetes) and a compose topology run without Docker."""
