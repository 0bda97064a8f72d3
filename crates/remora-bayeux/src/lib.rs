//! A Bayeux 1.0 server (CometD and Faye compatible) that carries session replicas.
