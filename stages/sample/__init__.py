"""The `sample` kind: a policy answers each prompt K times, the answers labelers rank."""
