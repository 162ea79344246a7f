//! The builder's errors: each names the service, path, image or URL it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the project is empty: no docker-compose.yml and no Dockerfile at its root")]
    EmptyProject,
    #[error("{file}: not valid YAML: {source}")]
    Yaml {
        file: String,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{file}: {source}")]
    Compose {
        file: String,
        #[source]
        source: resin_api_types::compose::ComposeError,
    },
    #[error("{file}: {message}")]
    ComposeShape { file: String, message: String },
    #[error("service {service}: the build context {context:?} is not a directory of the project")]
    MissingContext { service: String, context: String },
    #[error("service {service}: no Dockerfile at {path:?}")]
    MissingDockerfile { service: String, path: String },
    #[error("service {service}: the build context is over the limit of {limit} bytes")]
    ContextTooLarge { service: String, limit: u64 },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("device type {0:?} has no known image platform")]
    UnknownDeviceType(String),
    #[error("the Docker engine: {0}")]
    Engine(#[source] bollard::errors::Error),
    #[error("service {service}: the build failed: {message}")]
    BuildFailed { service: String, message: String },
    #[error("service {service}: the image is for {found}, the fleet's devices need {expected}")]
    WrongArchitecture {
        service: String,
        expected: String,
        found: String,
    },
    #[error("pulling {image}: {message}")]
    Pull { image: String, message: String },
    #[error("pushing {image}: {message}")]
    Push { image: String, message: String },
    #[error("registry {url}: {message}")]
    Registry { url: String, message: String },
    #[error("the build ran past its timeout of {0} s")]
    Timeout(u64),
    #[error("the build was cancelled")]
    Cancelled,
    #[error("{0}")]
    Invalid(String),
}
