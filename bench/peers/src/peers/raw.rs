//! The floor: a plain create of an IssueLock (409 = held) and a delete with a `uid`
//! precondition, through the same API server, without the library.

use super::{Ctx, LockPeer, kube_client};
use issuelock::{Holder, IssueKey, IssueLock, IssueLockSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use std::collections::BTreeMap;

/// What a raw create sends besides name and spec.
#[derive(Clone, Debug, Default)]
pub enum Shape {
    /// Nothing: the floor.
    #[default]
    Plain,
    /// The metadata the library sends: the holder-lease label and the acquire-nonce
    /// annotation, and, with an owner, an ownerReference to a Lease.
    Library { owner: Option<OwnerReference> },
}

pub struct Raw {
    api: Api<IssueLock>,
    holder: Holder,
    shape: Shape,
}

impl Raw {
    /// A raw client sending `shape`; `Library { owner: Some(_) }` asks for a Lease of its
    /// own to own its objects (created here).
    pub async fn with_shape(ctx: &Ctx, who: &str, owned: Option<bool>) -> anyhow::Result<Self> {
        let mut raw = Self::connect(ctx, who).await?;
        let Some(owned) = owned else { return Ok(raw) };
        let owner = if owned {
            let leases: Api<Lease> = Api::namespaced(raw.api.clone().into_client(), &ctx.namespace);
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(raw.holder.lease.clone()),
                    ..ObjectMeta::default()
                },
                spec: None,
            };
            let made = leases.create(&PostParams::default(), &lease).await?;
            Some(issuelock::crd::lease_owner(
                &raw.holder.lease,
                made.metadata.uid.as_deref().unwrap_or_default(),
            ))
        } else {
            None
        };
        raw.shape = Shape::Library { owner };
        Ok(raw)
    }

    /// A raw client whose objects are those `locks` would make, byte for byte but the
    /// name's prefix and the nonce's value: its holder (user included) and an
    /// ownerReference to its heartbeat Lease, which the library keeps renewing.
    pub async fn like(ctx: &Ctx, locks: &issuelock::LockClient) -> anyhow::Result<Self> {
        let holder = locks.holder().clone();
        let client = kube_client().await?;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ctx.namespace);
        let lease = leases.get(&holder.lease).await?;
        let owner = issuelock::crd::lease_owner(
            &holder.lease,
            lease.metadata.uid.as_deref().unwrap_or_default(),
        );
        Ok(Self {
            api: Api::namespaced(client, &ctx.namespace),
            holder,
            shape: Shape::Library { owner: Some(owner) },
        })
    }
}

/// A lock this peer created: its name and uid.
pub struct RawHeld {
    name: String,
    uid: String,
}

impl LockPeer for Raw {
    type Held = RawHeld;

    async fn connect(ctx: &Ctx, who: &str) -> anyhow::Result<Self> {
        Ok(Self {
            api: Api::namespaced(kube_client().await?, &ctx.namespace),
            holder: Holder {
                identity: who.to_owned(),
                pod: None,
                lease: format!("{who}-raw"),
                user: None,
            },
            shape: Shape::Plain,
        })
    }

    async fn try_acquire(&self, issue: &str) -> anyhow::Result<Option<RawHeld>> {
        let name = format!("raw-{}", IssueKey::parse(issue)?.lock_name());
        let mut lock = IssueLock::new(
            &name,
            IssueLockSpec {
                issue: issue.to_owned(),
                holder: self.holder.clone(),
                max_hold_seconds: None,
                signature: None,
            },
        );
        if let Shape::Library { owner } = &self.shape {
            lock.metadata.labels = Some(BTreeMap::from([(
                issuelock::crd::HOLDER_LEASE_LABEL.to_owned(),
                self.holder.lease.clone(),
            )]));
            lock.metadata.annotations = Some(BTreeMap::from([(
                issuelock::lock::ACQUIRE_NONCE_ANNOTATION.to_owned(),
                issuelock::holder::random_suffix(),
            )]));
            lock.metadata.owner_references = owner.clone().map(|o| vec![o]);
        }
        match self.api.create(&PostParams::default(), &lock).await {
            Ok(made) => Ok(Some(RawHeld {
                name,
                uid: made.metadata.uid.unwrap_or_default(),
            })),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn release(&self, held: RawHeld) -> anyhow::Result<()> {
        let params = DeleteParams::default().preconditions(Preconditions {
            uid: Some(held.uid),
            resource_version: None,
        });
        self.api.delete(&held.name, &params).await?;
        Ok(())
    }
}
